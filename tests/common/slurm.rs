//! A one-node Slurm cluster for tests, on 127.0.0.1, started and stopped by the test: its own
//! munged (own key and socket), slurmctld and slurmd in the foreground at free ports, bound
//! to 127.0.0.1 only (`NoCtldInAddrAny,NoInAddrAny`: their configured addresses, not any
//! address), every path in a temp folder, node Features `cpu,h100sim`. `.ci/run` installs Debian's
//! `slurmctld slurmd slurm-client munge`; elsewhere their absence is a SKIP, in CI a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::servers::{find, free_port};

pub(crate) struct Cluster {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    /// The folder jobs run in (`runs_on.workdir`): not the submitter's project.
    pub workdir: PathBuf,
    children: Vec<(&'static str, Child)>,
}

fn spawn(exe: &Path, args: &[&str], conf: &Path, log: &Path) -> Child {
    Command::new(exe)
        .args(args)
        .env("SLURM_CONF", conf)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", exe.display()))
}

impl Cluster {
    /// Start munged, slurmctld and slurmd; wait (at most 30 s) until the node is idle.
    pub(crate) fn start() -> Option<Cluster> {
        let sbin = |n: &str| vec![PathBuf::from(format!("/usr/sbin/{n}"))];
        let munged = find("munged", &sbin("munged"))?;
        let ctld = find("slurmctld", &sbin("slurmctld"))?;
        let slurmd = find("slurmd", &sbin("slurmd"))?;
        find("sbatch", &[PathBuf::from("/usr/bin/sbatch")])?;
        let dir = tempfile::Builder::new()
            .prefix("fb-slurm")
            .tempdir()
            .unwrap();
        let d = dir.path().to_path_buf();
        for sub in ["state", "spool", "log", "jobs"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // munged checks that everything on its socket's path is reachable.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let key: Vec<u8> = (0..1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        std::fs::write(d.join("munge.key"), key).unwrap();
        std::fs::set_permissions(d.join("munge.key"), std::fs::Permissions::from_mode(0o400))
            .unwrap();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_string();
        let (ctld_port, d_port) = (free_port(), free_port());
        let p = d.display();
        let conf_text = format!(
            "ClusterName=fbtest\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser=root\nSlurmdUser=root\n\
             AuthType=auth/munge\nAuthInfo=socket={p}/munge.sock\nCredType=cred/munge\n\
             StateSaveLocation={p}/state\nSlurmdSpoolDir={p}/spool\n\
             SlurmctldPidFile={p}/slurmctld.pid\nSlurmdPidFile={p}/slurmd.pid\n\
             SlurmctldLogFile={p}/log/slurmctld.log\nSlurmdLogFile={p}/log/slurmd.log\n\
             SlurmctldPort={ctld_port}\nSlurmdPort={d_port}\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
             SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
             ReturnToService=2\nMpiDefault=none\nKillWait=5\n\
             CommunicationParameters=NoCtldInAddrAny,NoInAddrAny\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 Features=cpu,h100sim State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
        );
        let conf = d.join("slurm.conf");
        std::fs::write(&conf, conf_text).unwrap();
        let mut cluster = Cluster {
            workdir: d.join("jobs"),
            conf: conf.clone(),
            dir,
            children: Vec::new(),
        };
        let sock = format!("--socket={p}/munge.sock");
        let keyf = format!("--key-file={p}/munge.key");
        let pidf = format!("--pid-file={p}/munged.pid");
        let seed = format!("--seed-file={p}/munged.seed");
        let mlog = format!("--log-file={p}/log/munged.log");
        cluster.children.push((
            "munged",
            spawn(
                &munged,
                &["-F", "-f", &sock, &keyf, &pidf, &seed, &mlog],
                &conf,
                &d.join("log/munged.out"),
            ),
        ));
        let t0 = Instant::now();
        while !d.join("munge.sock").exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "munged did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster.children.push((
            "slurmctld",
            spawn(&ctld, &["-D", "-i"], &conf, &d.join("log/slurmctld.out")),
        ));
        cluster.children.push((
            "slurmd",
            spawn(&slurmd, &["-D"], &conf, &d.join("log/slurmd.out")),
        ));
        let t0 = Instant::now();
        loop {
            let out = cluster
                .command("sinfo")
                .args(["-h", "-o", "%T"])
                .output()
                .unwrap();
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "idle" {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                panic!(
                    "the Slurm node is not idle after 30 s (state `{state}`); slurmctld log:\n{}",
                    std::fs::read_to_string(d.join("log/slurmctld.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(cluster)
    }

    /// A Slurm client command against this cluster.
    pub(crate) fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// Stop slurmctld (and slurmd): the cluster is down, the munge socket stays.
    pub(crate) fn stop_daemons(&mut self) {
        self.children.retain_mut(|(name, c)| {
            if *name == "munged" {
                return true;
            }
            let _ = c.kill();
            let _ = c.wait();
            false
        });
    }

    /// The controller's log (for failure messages).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/slurmctld.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first, so no slurmstepd outlives the test.
        let _ = self.command("scancel").args(["--user=root"]).output();
        for (_, c) in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
