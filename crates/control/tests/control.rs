//! End-to-end tests of the control plane: real redb files in temp dirs, real HTTP on loopback.

use std::path::Path;
use std::time::{Duration, Instant};

use control::{Command, ControlConfig, ControlPlane, ErrorKind, Outcome};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A member as the tests run it: the control plane and an HTTP server for its raft routes.
struct TestNode {
    cp: ControlPlane,
    addr: String,
    stop: Option<oneshot::Sender<()>>,
}

impl TestNode {
    async fn start(node_id: u64, dir: &Path) -> TestNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cp = ControlPlane::open(ControlConfig {
            node_id,
            data_dir: dir.to_path_buf(),
            api_addr: addr.clone(),
        })
        .await
        .unwrap();
        // The member's own REST API would be merged here too.
        let app = axum::Router::new().merge(cp.router());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        TestNode {
            cp,
            addr,
            stop: Some(tx),
        }
    }

    /// Stop the node as a crash would look to its peers: raft stopped, port closed.
    async fn kill(&mut self) {
        self.cp.shutdown().await;
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn create(name: &str) -> Command {
    Command::CreateVolume {
        name: name.into(),
        size: 1 << 30,
        block_size: 4096,
        replicas: 1,
        thick: false,
        allow: vec![],
        chap: None,
        created: 1_700_000_000,
    }
}

fn volume_id(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Volume(v) => v.id,
        other => panic!("expected a volume, got {other:?}"),
    }
}

async fn bounded<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test exceeded its time bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_survives_restart() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut node = TestNode::start(1, dir.path()).await;
        node.cp.bootstrap_single().await.unwrap();
        assert!(node.cp.is_leader());
        assert_eq!(node.cp.leader(), Some((1, node.addr.clone())));

        let mut rx = node.cp.subscribe();
        rx.borrow_and_update();
        let out = node.cp.write(create("vol1")).await.unwrap();
        assert_eq!(volume_id(&out), 1);
        assert!(rx.has_changed().unwrap());
        assert!(node.cp.state().volumes.contains_key("vol1"));
        let dup = node.cp.write(create("vol1")).await.unwrap();
        assert!(matches!(dup, Outcome::Refused { .. }), "{dup:?}");

        // A snapshot, then one more write that lives only in the log.
        node.cp.snapshot_now().await.unwrap();
        assert!(dir.path().join("snapshot.json").exists());
        assert_eq!(volume_id(&node.cp.write(create("vol2")).await.unwrap()), 2);
        node.kill().await;
        let err = node.cp.write(create("vol3")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shutdown);
        drop(node);

        let mut node = TestNode::start(1, dir.path()).await;
        node.cp.bootstrap_single().await.unwrap(); // a no-op now
        node.cp.read_barrier().await.unwrap();
        let state = node.cp.state();
        assert_eq!(state.volumes["vol1"].id, 1);
        assert_eq!(state.volumes["vol2"].id, 2);
        assert_eq!(volume_id(&node.cp.write(create("vol3")).await.unwrap()), 3);
        node.kill().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_forward_writes_and_fail_over() {
    bounded(90, async {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            nodes.push(TestNode::start(i as u64 + 1, d.path()).await);
        }
        nodes[0].cp.bootstrap_single().await.unwrap();
        nodes[0]
            .cp
            .add_voter(2, nodes[1].addr.clone())
            .await
            .unwrap();
        // A membership change through a follower is forwarded to the leader.
        nodes[1]
            .cp
            .add_voter(3, nodes[2].addr.clone())
            .await
            .unwrap();
        let members = nodes[0].cp.membership();
        assert_eq!(members.len(), 3);
        assert!(members.iter().all(|m| m.voter), "{members:?}");

        // A write through a follower is forwarded to the leader.
        assert!(nodes[0].cp.is_leader());
        assert!(!nodes[2].cp.is_leader());
        let out = nodes[2].cp.write(create("fwd")).await.unwrap();
        assert_eq!(volume_id(&out), 1);
        for n in &nodes {
            n.cp.read_barrier().await.unwrap();
            assert!(n.cp.state().volumes.contains_key("fwd"));
            assert_eq!(n.cp.leader().map(|l| l.0), Some(1));
        }

        // Kill the leader: a new one is elected and accepts writes within 5 s.
        let killed_at = Instant::now();
        nodes[0].kill().await;
        let out = nodes[1].cp.write(create("after")).await.unwrap();
        let took = killed_at.elapsed();
        assert_eq!(volume_id(&out), 2);
        assert!(took < Duration::from_secs(5), "fail-over took {took:?}");
        let leader = nodes[1].cp.leader().expect("a leader").0;
        assert!(leader == 2 || leader == 3, "leader {leader}");
        for n in &nodes[1..] {
            n.cp.read_barrier().await.unwrap();
            assert_eq!(n.cp.state().volumes.len(), 2);
        }
        eprintln!("fail-over took {took:?}; new leader {leader}");
        for n in &mut nodes[1..] {
            n.kill().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_node_catches_up_from_a_snapshot() {
    bounded(90, async {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut a = TestNode::start(1, dirs[0].path()).await;
        a.cp.bootstrap_single().await.unwrap();
        let started = Instant::now();
        for i in 0..150 {
            a.cp.write(create(&format!("v{i}"))).await.unwrap();
        }
        eprintln!("150 writes took {:?}", started.elapsed());
        // The snapshot lets openraft purge all but the last 100 logs.
        a.cp.snapshot_now().await.unwrap();
        let mut metrics = a.cp.metrics();
        metrics
            .wait_for(|m| m.purged.is_some())
            .await
            .expect("logs purged after the snapshot");

        // The new node can only be brought up to date with the snapshot (POST /raft/snapshot).
        let mut b = TestNode::start(2, dirs[1].path()).await;
        a.cp.add_voter(2, b.addr.clone()).await.unwrap();
        b.cp.read_barrier().await.unwrap();
        assert_eq!(b.cp.state().volumes.len(), 150);
        assert!(dirs[1].path().join("snapshot.json").exists());
        // And it keeps following.
        b.cp.write(create("last")).await.unwrap();
        b.cp.read_barrier().await.unwrap();
        assert_eq!(b.cp.state().volumes.len(), 151);
        a.kill().await;
        b.kill().await;
    })
    .await;
}
