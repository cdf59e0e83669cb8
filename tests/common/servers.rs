//! Real servers for the remote-cache tests, started on 127.0.0.1 at free ports and stopped
//! when dropped: nginx with WebDAV PUT (an HTTP cache) and s3s-fs (an S3 server over a folder
//! that checks SigV4 signatures). Every wait is bounded in count and time. `.ci/run` installs
//! both; elsewhere a missing server is a SKIP, in CI a failure.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until something accepts connections on `port` (at most 10 s, 200 tries).
fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let t0 = Instant::now();
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 10 s");
}

/// A server binary, or None (with a SKIP line) outside CI; in CI its absence fails.
pub(crate) fn find(name: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    let found = candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{name} is not installed: .ci/run installs it");
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: {name} not found (install it as .ci/run does)"
        );
    }
    found
}

/// nginx serving a folder over HTTP with WebDAV PUT, logging every request.
pub(crate) struct Nginx {
    pub port: u16,
    pub dir: tempfile::TempDir,
    tls: bool,
    child: Option<Child>,
}

impl Nginx {
    pub(crate) fn start() -> Option<Nginx> {
        Nginx::start_with(false)
    }

    /// nginx over HTTPS, with a certificate for 127.0.0.1 from a CA made by `openssl`
    /// (P-256); [`Nginx::ca`] is the file to trust.
    pub(crate) fn start_tls() -> Option<Nginx> {
        Nginx::start_with(true)
    }

    fn start_with(tls: bool) -> Option<Nginx> {
        let exe = find("nginx", &[PathBuf::from("/usr/sbin/nginx")])?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let port = free_port();
        let listen = if tls {
            find("openssl", &[PathBuf::from("/usr/bin/openssl")])?;
            // A CA, and a server certificate for 127.0.0.1 signed by it (a self-signed CA
            // certificate cannot serve as the server's own: webpki refuses a CA as an end
            // entity).
            let script = "set -e
                openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \\
                  -subj '/CN=facebuild test CA' -keyout ca.key -out ca.pem
                openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
                  -subj '/CN=127.0.0.1' -keyout key.pem -out req.csr
                printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > ext.cnf
                openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \\
                  -extfile ext.cnf -out cert.pem";
            let made = Command::new("sh")
                .args(["-c", script])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                made.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&made.stderr)
            );
            format!(
                "listen 127.0.0.1:{port} ssl; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;"
            )
        } else {
            format!("listen 127.0.0.1:{port};")
        };
        let conf = format!(
            // One process (no master): stopping the child stops the server.
            "master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{ access_log {d}/access.log; client_body_temp_path {d}/tmp; client_max_body_size 0;\n\
               server {{ {listen} root {d}/www;\n\
                 location / {{ dav_methods PUT DELETE MKCOL; create_full_put_path on; dav_access user:rw group:r all:r; }} }} }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let mut child = Command::new(exe)
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .args(["-g", "daemon off; user root;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port, &mut child, "nginx");
        Some(Nginx {
            port,
            dir,
            tls,
            child: Some(child),
        })
    }

    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/cache", self.port)
    }

    /// The CA certificate that signed [`Nginx::start_tls`]'s server certificate.
    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The served folder for the cache's prefix.
    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("www/cache")
    }

    /// Every request line of the access log so far.
    pub(crate) fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split('"').nth(1).map(String::from))
            .collect()
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// s3s-fs: a real S3 server (SigV4-checked) over a folder, with one bucket `fbcache`.
pub(crate) struct S3 {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

pub(crate) const S3_KEY: &str = "AKFACEBUILD";
pub(crate) const S3_SECRET: &str = "secret-for-tests-only";

impl S3 {
    pub(crate) fn start() -> Option<S3> {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
            });
        let exe = find("s3s-fs", &[home.join("bin/s3s-fs")])?;
        let dir = tempfile::tempdir().unwrap();
        // A bucket is a folder of the served root.
        std::fs::create_dir_all(dir.path().join("fbcache")).unwrap();
        let port = free_port();
        let mut child = Command::new(exe)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port, &mut child, "s3s-fs");
        Some(S3 {
            port,
            dir,
            child: Some(child),
        })
    }

    /// The environment a facebuild process needs to reach this server, with `secret`.
    pub(crate) fn env(&self, secret: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", S3_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub(crate) fn url(&self) -> String {
        "s3://fbcache/cache".into()
    }

    /// The served folder for the cache's prefix.
    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("fbcache/cache")
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every file under `dir`, relative, sorted.
pub(crate) fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}
