//! The iSCSI sessions of the whole group: an initiator may be logged in through any
//! member's portal, so `volume show` and the checks before deleting or restoring a volume
//! ask every up member, not only the one answering the API call.

use crate::Member;
use api::SessionView;
use std::time::Duration;

/// How long a member waits for another's session list; one that does not answer in time
/// is down or cut off, and its sessions are gone or about to be.
const ASK_TIMEOUT: Duration = Duration::from_millis(900);

/// Every normal session on every up member, each with its target.
pub async fn of_group(m: &Member) -> Vec<SessionView> {
    let mut all = m.registry.all_sessions();
    let state = m.control.state();
    let mut asks = tokio::task::JoinSet::new();
    for o in state
        .up_members()
        .filter(|o| o.name != m.registry.member && !o.api_addr.is_empty())
    {
        let client = api::Client::new(vec![format!("http://{}", o.api_addr)]);
        asks.spawn(async move {
            tokio::time::timeout(
                ASK_TIMEOUT,
                client.get::<Vec<SessionView>>("/v1/sessions/here"),
            )
            .await
        });
    }
    while let Some(answer) = asks.join_next().await {
        if let Ok(Ok(Ok(sessions))) = answer {
            all.extend(sessions);
        }
    }
    all.sort_by(|a, b| (&a.initiator, &a.isid, &a.member).cmp(&(&b.initiator, &b.isid, &b.member)));
    all
}

/// The sessions of target `iqn` among `all` (without the target field, as a volume lists
/// them).
pub fn of_target(all: &[SessionView], iqn: &str) -> Vec<SessionView> {
    all.iter()
        .filter(|s| s.target == iqn)
        .map(|s| SessionView {
            target: String::new(),
            ..s.clone()
        })
        .collect()
}
