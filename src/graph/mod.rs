//! The step DAG: built with petgraph from `needs`/`from`, ordered topologically (ties broken by
//! manifest order so plans are stable), and cycle errors that print the cycle's path.

use std::collections::{BTreeSet, HashSet};

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::error::{Error, Result};
use crate::manifest::Manifest;

pub(crate) mod plan;

pub(crate) struct Dag {
    graph: DiGraph<String, ()>,
    /// Topological order, manifest order among independent steps.
    order: Vec<NodeIndex>,
}

impl Dag {
    pub(crate) fn build(m: &Manifest) -> Result<Dag> {
        let mut graph = DiGraph::new();
        let idx: Vec<NodeIndex> = m.steps.keys().map(|k| graph.add_node(k.clone())).collect();
        for (i, step) in m.steps.values().enumerate() {
            let mut seen = HashSet::new();
            for (dep, _) in step.deps() {
                if seen.insert(dep.clone()) {
                    let j = m
                        .steps
                        .get_index_of(&dep)
                        .expect("validated by the manifest loader");
                    graph.add_edge(idx[j], idx[i], ());
                }
            }
        }
        if let Err(cycle) = petgraph::algo::toposort(&graph, None) {
            let mut path = cycle_path(&graph, cycle.node_id());
            // Start at the step written first, so the message is the same on every run.
            let first_pos = path
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| n.index())
                .map(|(i, _)| i)
                .unwrap_or(0);
            path.rotate_left(first_pos);
            let first = &m.steps[graph[path[0]].as_str()];
            let names: Vec<&str> = path
                .iter()
                .chain(path.first())
                .map(|n| graph[*n].as_str())
                .collect();
            return Err(Error::manifest(
                first.location.clone(),
                format!("dependency cycle: {}", names.join(" -> ")),
            )
            .with_hint(
                "a step cannot (indirectly) need itself; remove one of these `needs`/`from` edges",
            ));
        }
        // Kahn's algorithm with a min-heap on manifest position: deterministic and readable.
        let mut indeg: Vec<usize> = graph
            .node_indices()
            .map(|n| graph.neighbors_directed(n, Direction::Incoming).count())
            .collect();
        let mut ready: BTreeSet<usize> = (0..indeg.len()).filter(|&i| indeg[i] == 0).collect();
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(i) = ready.pop_first() {
            order.push(NodeIndex::new(i));
            for n in graph.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
                indeg[n.index()] -= 1;
                if indeg[n.index()] == 0 {
                    ready.insert(n.index());
                }
            }
        }
        Ok(Dag { graph, order })
    }

    pub(crate) fn order(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(|n| self.graph[*n].as_str())
    }

    fn node(&self, name: &str) -> Option<NodeIndex> {
        self.graph.node_indices().find(|n| self.graph[*n] == name)
    }

    /// Direct upstream steps, in manifest order.
    pub(crate) fn deps(&self, name: &str) -> Vec<&str> {
        let Some(n) = self.node(name) else {
            return vec![];
        };
        let mut v: Vec<NodeIndex> = self
            .graph
            .neighbors_directed(n, Direction::Incoming)
            .collect();
        v.sort();
        v.into_iter().map(|n| self.graph[n].as_str()).collect()
    }

    /// The steps needed to build `targets`: the targets and everything upstream of them,
    /// in topological order. An empty target list selects every step.
    pub(crate) fn select(&self, targets: &[String]) -> Result<Vec<String>> {
        if targets.is_empty() {
            return Ok(self.order().map(str::to_string).collect());
        }
        let mut keep = HashSet::new();
        let mut stack = Vec::new();
        for t in targets {
            let n = self.node(t).ok_or_else(|| {
                let known: Vec<&str> = self.order().collect();
                Error::usage(format!("--target `{t}` is not a step of this pipeline"))
                    .with_hint(format!("steps: {}", known.join(", ")))
            })?;
            stack.push(n);
        }
        while let Some(n) = stack.pop() {
            if keep.insert(n) {
                stack.extend(self.graph.neighbors_directed(n, Direction::Incoming));
            }
        }
        Ok(self
            .order
            .iter()
            .filter(|n| keep.contains(n))
            .map(|n| self.graph[*n].clone())
            .collect())
    }
}

/// A cycle through `start`: DFS from `start` until an edge leads back to it.
fn cycle_path(g: &DiGraph<String, ()>, start: NodeIndex) -> Vec<NodeIndex> {
    fn dfs(
        g: &DiGraph<String, ()>,
        n: NodeIndex,
        start: NodeIndex,
        path: &mut Vec<NodeIndex>,
        seen: &mut HashSet<NodeIndex>,
    ) -> bool {
        path.push(n);
        let mut next: Vec<NodeIndex> = g.neighbors_directed(n, Direction::Outgoing).collect();
        next.sort();
        for m in next {
            if m == start {
                return true;
            }
            if seen.insert(m) && dfs(g, m, start, path, seen) {
                return true;
            }
        }
        path.pop();
        false
    }
    let mut path = Vec::new();
    let mut seen = HashSet::new();
    if dfs(g, start, start, &mut path, &mut seen) {
        path
    } else {
        vec![start]
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::Manifest;

    const HEAD: &str = "schema: 1\nmodel:\n  task: recognition\n  input: {name: input.1, shape: [1, 3, 112, 112]}\nsteps:\n";

    #[test]
    fn cycle_is_reported_with_path_and_location() {
        let y = format!(
            "{HEAD}  a:\n    kind: check\n    needs: [c]\n  b:\n    kind: check\n    needs: [a]\n  c:\n    kind: check\n    needs: [b]\n"
        );
        // The manifest parses; the cycle is found when its graph is built.
        let m = Manifest::parse("p.yaml".into(), &y).unwrap();
        let e = super::Dag::build(&m).err().unwrap().to_string();
        assert!(e.contains("dependency cycle: a -> b -> c -> a"), "{e}");
        assert!(e.starts_with("p.yaml:7:5"), "{e}");
    }

    #[test]
    fn order_is_topological_and_stable() {
        let y = format!(
            "{HEAD}  z:\n    kind: check\n    needs: [b]\n  a:\n    kind: check\n  b:\n    kind: check\n    needs: [a]\n"
        );
        let m = Manifest::parse("p.yaml".into(), &y).unwrap();
        let d = super::Dag::build(&m).unwrap();
        assert_eq!(d.order().collect::<Vec<_>>(), ["a", "b", "z"]);
        assert_eq!(d.select(&["b".into()]).unwrap(), ["a", "b"]);
    }
}
