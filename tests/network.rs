//! A remote host for tests: two network namespaces joined by one virtual Ethernet link,
//! "the machine" at [`MACHINE_IP`] (where a test's spawner, agent-exec and broker run)
//! and "the remote host" at [`REMOTE_IP`] (where a test server runs). Neither has any
//! other route, so every byte the machine sends to the remote host crosses the link, and
//! the link's counters say how many did.
//!
//! Both live in a user namespace the test makes (util-linux's `unshare` and `nsenter`,
//! iproute2's `ip`): no privilege is needed, and the host's own network is not touched.
//! IPv6 is off in both, so the link carries nothing the test did not cause. The
//! namespaces go when the `Network` is dropped, or when the test process dies (each
//! holder waits on a pipe from it), once the processes started in them have exited.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};

/// The machine's address on the link.
pub const MACHINE_IP: &str = "10.99.0.1";
/// The remote host's address on the link.
pub const REMOTE_IP: &str = "10.99.0.2";
/// The machine's end of the link.
const MACHINE_LINK: &str = "machine0";
/// The remote host's end of the link.
const REMOTE_LINK: &str = "remote0";

/// Turn IPv6 off (nothing of it on the link: no router or neighbour solicitations), then
/// say so and wait for the test's pipe to close.
const HOLD: &str = "for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 \
                    /proc/sys/net/ipv6/conf/default/disable_ipv6; do \
                    if [ -e \"$f\" ]; then echo 1 > \"$f\" || exit 1; fi; done; \
                    echo ready; read -r _";

/// The way into one side of a [`Network`]: commands made with it run there. Valid while
/// the `Network` lives.
#[derive(Clone, Copy, Debug)]
pub struct Entry(u32);

impl Entry {
    /// `program` run in this side's namespaces (user and network), with this process's
    /// credentials (the user namespace's root, mapped to them).
    pub fn command(self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.0.to_string()])
            .args(["--user", "--net", "--preserve-credentials", "--"])
            .arg(program);
        cmd
    }
}

/// The two namespaces and the link between them.
pub struct Network {
    machine: Holder,
    remote: Holder,
}

/// A process that holds a network namespace open until the test lets it go.
struct Holder {
    child: Child,
    /// Closing it ends the holder.
    _pipe: ChildStdin,
}

impl Holder {
    /// Start `cmd` (which runs [`HOLD`] in a new network namespace) and wait until it is in
    /// place.
    fn start(mut cmd: Command) -> Holder {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("util-linux's unshare and nsenter are needed for the remote-host tests");
        let ready = BufReader::new(child.stdout.take().expect("stdout"))
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "ready");
        if !ready {
            let out = child.wait_with_output().expect("the holder ends");
            panic!(
                "cannot make a network namespace for the remote-host tests ({}): they need \
                 user namespaces (`unshare --user --map-root-user --net true` must work)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let pipe = child.stdin.take().expect("stdin");
        Holder { child, _pipe: pipe }
    }

    /// The way into this holder's namespaces.
    fn entry(&self) -> Entry {
        Entry(self.child.id())
    }

    /// `program` run in this holder's namespaces.
    fn enter(&self, program: impl AsRef<OsStr>) -> Command {
        self.entry().command(program)
    }

    /// Run `script` with `sh` in this holder's namespaces; it must succeed.
    fn sh(&self, script: &str) {
        // `ip` is in an sbin directory, which a user's $PATH may lack.
        let path = std::env::var("PATH").unwrap_or_default();
        let out = self
            .enter("sh")
            .args(["-c", script])
            .env("PATH", format!("{path}:/usr/sbin:/sbin"))
            .stdin(Stdio::null())
            .output()
            .expect("nsenter runs");
        assert!(
            out.status.success(),
            "`{script}`: {} (the remote-host tests need iproute2's `ip`)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Network {
    /// Make both namespaces and the link, addressed and up.
    pub fn new() -> Network {
        let mut machine = Command::new("unshare");
        machine.args(["--user", "--map-root-user", "--net", "--", "sh", "-c", HOLD]);
        let machine = Holder::start(machine);
        let mut remote = machine.enter("unshare");
        remote.args(["--net", "--", "sh", "-c", HOLD]);
        let remote = Holder::start(remote);
        machine.sh(&format!(
            "ip link add {MACHINE_LINK} type veth peer name {REMOTE_LINK} netns {}",
            remote.child.id()
        ));
        for (holder, link, ip) in [
            (&machine, MACHINE_LINK, MACHINE_IP),
            (&remote, REMOTE_LINK, REMOTE_IP),
        ] {
            holder.sh(&format!(
                "ip link set lo up && ip addr add {ip}/24 dev {link} && ip link set {link} up"
            ));
        }
        Network { machine, remote }
    }

    /// The way onto the machine.
    pub fn machine(&self) -> Entry {
        self.machine.entry()
    }

    /// `program` run on the remote host.
    pub fn on_remote(&self, program: impl AsRef<OsStr>) -> Command {
        self.remote.enter(program)
    }

    /// Bytes the machine has sent over the link to the remote host, from its counters.
    pub fn bytes_to_remote(&self) -> u64 {
        // /proc/net/dev shows the reader's network namespace: one line per interface,
        // `name: ` then 8 received counters, then bytes sent.
        let out = self
            .machine
            .enter("cat")
            .arg("/proc/net/dev")
            .output()
            .expect("nsenter runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|line| line.trim_start().strip_prefix(&format!("{MACHINE_LINK}:")))
            .and_then(|counters| counters.split_whitespace().nth(8)?.parse().ok())
            .unwrap_or_else(|| panic!("no counters for {MACHINE_LINK} in /proc/net/dev: {text}"))
    }
}
