//! Random sequences of compute commands (hosts, VMs, migrations, with the agents' steps in
//! any order) keep the state's promises:
//! - a VM has at most one unfinished migration, and only a running VM migrates;
//! - no host runs more live migrations out or in than the limits;
//! - a volume is a disk of at most one VM, and its only writer is that VM's owner;
//! - a finished migration leaves the VM owned by its destination (completed) or its source.

use control::{
    ClusterState, Command, ComputeCommand, Host, MigrationResult, MigrationState, Outcome, VmBoot,
    DEFAULT_MIGRATION_LIMIT,
};
use proptest::prelude::*;
use std::collections::HashMap;

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
const VMS: [&str; 5] = ["a", "b", "c", "d", "e"];

#[derive(Debug, Clone)]
enum Step {
    Start(usize, usize),
    Stop(usize),
    Stopped(usize, usize),
    Migrate(usize, usize),
    Begin(u64),
    Switchover(u64),
    Finish(u64, u8),
    Cancel(u64),
    Drain(usize, bool),
    Attach(usize, usize),
    Detach(usize, usize),
}

fn step() -> impl Strategy<Value = Step> {
    let h = 0..HOSTS.len();
    let v = 0..VMS.len();
    let id = 1u64..8;
    prop_oneof![
        3 => (v.clone(), h.clone()).prop_map(|(v, h)| Step::Migrate(v, h)),
        3 => id.clone().prop_map(Step::Begin),
        1 => (v.clone(), h.clone()).prop_map(|(v, h)| Step::Start(v, h)),
        1 => v.clone().prop_map(Step::Stop),
        1 => (v.clone(), h.clone()).prop_map(|(v, h)| Step::Stopped(v, h)),
        1 => id.clone().prop_map(Step::Switchover),
        1 => (id.clone(), 0u8..3).prop_map(|(i, r)| Step::Finish(i, r)),
        1 => id.prop_map(Step::Cancel),
        1 => (h, any::<bool>()).prop_map(|(h, s)| Step::Drain(h, s)),
        1 => (v.clone(), 0..VMS.len() + 2).prop_map(|(v, d)| Step::Attach(v, d)),
        1 => (v, 0..VMS.len() + 2).prop_map(|(v, d)| Step::Detach(v, d)),
    ]
}

fn setup() -> ClusterState {
    let mut s = ClusterState::default();
    for h in HOSTS {
        s.apply(compute(ComputeCommand::RegisterHost(Host {
            name: h.into(),
            api_addr: "127.0.0.1:1".into(),
            initiator: Host::initiator_for(h),
            accel: "tcg".into(),
            schedulable: true,
        })));
    }
    for i in 0..VMS.len() + 2 {
        s.apply(Command::CreateVolume {
            name: format!("vol{i}"),
            size: 1 << 20,
            block_size: 512,
            replicas: 1,
            thick: false,
            allow: vec![],
            chap: None,
            created: 0,
        });
    }
    for (i, vm) in VMS.iter().enumerate() {
        s.apply(compute(ComputeCommand::DefineVm {
            name: vm.to_string(),
            cpus: 1,
            memory_bytes: 64 << 20,
            disks: vec![format!("vol{i}")],
            boot: VmBoot::Disk,
            created: 0,
        }));
        // Most VMs start on h1, so migrations out of one host compete for its slots.
        let host = if i < 4 { "h1" } else { "h2" };
        s.apply(compute(ComputeCommand::StartVm {
            name: vm.to_string(),
            host: host.into(),
        }));
    }
    s
}

fn compute(cmd: ComputeCommand) -> Command {
    Command::Compute { cmd }
}

fn to_command(s: &Step) -> ComputeCommand {
    use ComputeCommand::*;
    match *s {
        Step::Start(v, h) => StartVm {
            name: VMS[v].into(),
            host: HOSTS[h].into(),
        },
        Step::Stop(v) => StopVm {
            name: VMS[v].into(),
        },
        Step::Stopped(v, h) => VmStopped {
            name: VMS[v].into(),
            host: HOSTS[h].into(),
        },
        Step::Migrate(v, h) => RequestMigration {
            vm: VMS[v].into(),
            to: HOSTS[h].into(),
            quick: v % 2 == 0,
            downtime_limit_ms: 300,
            postcopy: false,
            max_bandwidth: None,
            requested: 0,
        },
        Step::Begin(id) => BeginMigration { id },
        Step::Switchover(id) => MigrationSwitchover { id },
        Step::Finish(id, r) => FinishMigration {
            id,
            result: match r {
                0 => MigrationResult::Completed {
                    downtime_ms: 1,
                    qemu_downtime_ms: 1,
                    total_ms: 1,
                },
                1 => MigrationResult::Failed { error: "x".into() },
                _ => MigrationResult::Cancelled { reason: "x".into() },
            },
        },
        Step::Cancel(id) => CancelMigration { id },
        Step::Drain(h, schedulable) => SetHostSchedulable {
            name: HOSTS[h].into(),
            schedulable,
        },
        Step::Attach(v, d) => AttachDisk {
            vm: VMS[v].into(),
            volume: format!("vol{d}"),
        },
        Step::Detach(v, d) => DetachDisk {
            vm: VMS[v].into(),
            volume: format!("vol{d}"),
        },
    }
}

fn check(s: &ClusterState) -> Result<(), TestCaseError> {
    let limit = DEFAULT_MIGRATION_LIMIT as usize;
    for h in HOSTS {
        let out = s
            .migrations
            .values()
            .filter(|m| m.state.is_active() && m.from == h)
            .count();
        let inb = s
            .migrations
            .values()
            .filter(|m| m.state.is_active() && m.to == h)
            .count();
        prop_assert!(out <= limit && inb <= limit, "{h}: {out} out, {inb} in");
    }
    for vm in s.vms.values() {
        let open: Vec<_> = s
            .migrations
            .values()
            .filter(|m| m.vm == vm.name && !m.state.is_final())
            .collect();
        prop_assert!(
            open.len() <= 1,
            "{} has {} open migrations",
            vm.name,
            open.len()
        );
        if vm.running {
            prop_assert!(vm.host.is_some(), "{} runs nowhere", vm.name);
        }
        if let Some(m) = open.first() {
            let owner = vm.host.as_deref();
            match m.state {
                MigrationState::Switchover => prop_assert_eq!(owner, Some(m.to.as_str())),
                _ => prop_assert_eq!(owner, Some(m.from.as_str())),
            }
        }
        for d in &vm.disks {
            let users = s.vms.values().filter(|v| v.disks.contains(d)).count();
            prop_assert_eq!(users, 1, "volume {} is a disk of {} VMs", d, users);
            let writer = s.volume_writer(d);
            let expected = vm.host.as_ref().map(|h| Host::initiator_for(h));
            prop_assert_eq!(writer, expected);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn compute_commands_keep_the_promises(steps in proptest::collection::vec(step(), 1..80)) {
        let mut s = setup();
        let mut finished: HashMap<u64, String> = HashMap::new();
        for st in &steps {
            let before = s.clone();
            let out = s.apply(compute(to_command(st)));
            if let Outcome::Refused { .. } = out {
                prop_assert_eq!(&s, &before, "a refused command changed the state");
            }
            if let Outcome::Migration(m) = &out {
                if m.state.is_final() && !finished.contains_key(&m.id) {
                    let owner = s.vms[&m.vm].host.clone().unwrap_or_default();
                    let want = if m.state == MigrationState::Completed { &m.to } else { &m.from };
                    if matches!(st, Step::Finish(..)) {
                        prop_assert_eq!(&owner, want);
                    }
                    finished.insert(m.id, owner);
                }
            }
            check(&s)?;
        }
    }
}
