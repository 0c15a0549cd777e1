//! Members in network namespaces of their own, for partitions that are real: each member
//! has two links, one on a *cluster* bridge (Raft, the API, member-to-member traffic) and
//! one on a *data* bridge (its iSCSI portal). The test process sits on both bridges.
//! Taking a member's cluster link down cuts it off from the group while initiators still
//! reach its portal. Everything is removed on drop; no traffic leaves these namespaces.
//!
//! ```text
//!  test (root ns) ── 10.N.0.254 ─┬─ cluster bridge ─┬─ member-1 10.N.0.1 (api, peer)
//!                                │                  ├─ member-2 10.N.0.2
//!                 ── 10.N.1.254 ─┴─ data bridge ──  └─ … portals on 10.N.1.i
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A set of namespaces and two bridges, named after this test process.
pub struct Net {
    tag: String,
    /// The second octet of this net's addresses.
    octet: u32,
    pub members: usize,
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Net {
    /// Namespaces for `members` members, linked to both bridges.
    pub fn new(members: usize) -> Net {
        let pid = std::process::id();
        let net = Net {
            tag: format!("hv{}", pid % 100_000),
            octet: 64 + pid % 128,
            members,
        };
        for (bridge, subnet) in [(net.bridge("c"), 0), (net.bridge("d"), 1)] {
            ip(&["link", "add", &bridge, "type", "bridge"]);
            let addr = format!("10.{}.{subnet}.254/24", net.octet);
            ip(&["addr", "add", &addr, "dev", &bridge]);
            ip(&["link", "set", &bridge, "up"]);
        }
        for i in 1..=members {
            let ns = net.ns(i);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            for (side, subnet) in [("c", 0), ("d", 1)] {
                let host = net.link(side, i);
                let inner = format!("eth{subnet}");
                ip(&[
                    "link", "add", &host, "type", "veth", "peer", "name", &inner, "netns", &ns,
                ]);
                ip(&["link", "set", &host, "master", &net.bridge(side), "up"]);
                let addr = format!("10.{}.{subnet}.{i}/24", net.octet);
                ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner]);
                ip(&["-n", &ns, "link", "set", &inner, "up"]);
            }
        }
        net
    }

    fn bridge(&self, side: &str) -> String {
        format!("{}{side}", self.tag)
    }

    fn link(&self, side: &str, i: usize) -> String {
        format!("{}{side}{i}", self.tag)
    }

    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    /// Member `i`'s address on the cluster network.
    pub fn cluster_ip(&self, i: usize) -> String {
        format!("10.{}.0.{i}", self.octet)
    }

    /// Member `i`'s address on the data network.
    pub fn data_ip(&self, i: usize) -> String {
        format!("10.{}.1.{i}", self.octet)
    }

    /// Cut member `i` off from the group (its cluster link goes down).
    pub fn partition(&self, i: usize) {
        ip(&["link", "set", &self.link("c", i), "down"]);
    }

    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.link("c", i), "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=self.members {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .output();
        }
        for side in ["c", "d"] {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge(side)])
                .output();
        }
    }
}

/// A member running in namespace `i` of `net`, killed (its process group) on drop.
pub struct NetMember {
    pub name: String,
    pub api: String,
    pub portal: String,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl NetMember {
    /// Start member `i` of `net` with its data under `root`; members after the first join
    /// through member 1.
    pub fn start(net: &Net, i: usize, root: &Path) -> NetMember {
        let dir = root.join(format!("member-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let api = format!("{}:7070", net.cluster_ip(i));
        let portal = format!("{}:3260", net.data_ip(i));
        let mut config = format!(
            "name = \"member-{i}\"\nnode_id = {i}\ndata_dir = {:?}\nportal = {portal:?}\napi = {api:?}\npeer = \"{}:7071\"\ncapacity = \"8GiB\"\nio_deadline_secs = 15\nbootstrap = {}\n",
            dir.join("data"),
            net.cluster_ip(i),
            i == 1,
        );
        if i > 1 {
            config.push_str(&format!("join = \"{}:7070\"\n", net.cluster_ip(1)));
        }
        let path = dir.join("member.toml");
        std::fs::write(&path, config).unwrap();
        let mut m = NetMember {
            name: format!("member-{i}"),
            api,
            portal,
            dir,
            child: None,
        };
        m.restart(net, i);
        m
    }

    /// Start the member's process again (after [`kill`](Self::kill), or a first time).
    pub fn restart(&mut self, net: &Net, i: usize) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("member.log"))
            .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.ns(i),
                super::haven_bin(),
                "member",
                "run",
            ])
            .arg("--config")
            .arg(self.dir.join("member.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()
            .expect("start a member in its namespace");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("member.log")).unwrap_or_default()
    }
}

impl Drop for NetMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait until `haven member list` through `api` shows `count` members online.
pub fn wait_members_online(api: &str, count: usize, limit: Duration) {
    let t = Instant::now();
    loop {
        let o = super::haven(&["member", "list", "--json"], &[("HAVEN_API", api)]);
        if o.status.success() {
            let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let online = list
                .as_array()
                .map_or(0, |l| l.iter().filter(|m| m["state"] == "online").count());
            if online == count {
                return;
            }
        }
        assert!(
            t.elapsed() < limit,
            "{count} members were not online within {limit:?}: {}",
            super::stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
