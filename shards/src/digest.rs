//! Notification digests by email (issue 4's "optional notification digests"): a user who
//! set `email_digest` to `daily` or `weekly` gets, once a day or a week, an email counting
//! the notifications they have not read since the last one, if there are any and their
//! address is verified.
//!
//! Each shard looks every `digest_check_s` at its own subscribers (profiles'
//! `user_digests`). Where a user's digests stand (when the last was made, the newest
//! notification it covered) is communication's `digests_sent`, written durably in the same
//! transaction as the queued email: a crash either loses both or keeps both, and the mailer
//! sends what is queued exactly once (communication.rs). A digest turned on starts from that
//! moment: the settings' write records where it stands (`social::settings_in`), so nothing
//! older is summed up.

use std::rc::Rc;
use std::time::Duration;

use nova_core::communication::{self, QueuedEmail};
use nova_core::identity;
use nova_core::notifications::{self, Kind};
use nova_core::profiles;
use nova_core::CoreError;

use crate::error::Fail;
use crate::shard::{now_ms, Shard};

/// Subscribers looked at between two yields of the shard's thread (each look is a read or
/// two: a page holds the thread well under a millisecond when nothing is due).
const PAGE: usize = 64;

/// A digest due: the unread notifications counted by kind, the newest of them, and the state
/// it replaces (the write checks it is still that).
struct Due {
    user: identity::User,
    counts: Vec<(Kind, u64)>,
    newest: u64,
    was: (u64, u64),
}

impl Shard {
    /// Runs until the shard drains: every `digest_check_s`, the digests that are due.
    pub async fn digest_loop(self: Rc<Self>) {
        let every = Duration::from_secs(self.cfg.digest_check_s);
        loop {
            glommio::timer::sleep(every).await;
            if self.draining.fired() {
                return;
            }
            if let Err(e) = self.digest_pass().await {
                tracing::warn!(error = %e, shard = self.id, "notification digests failed; retrying");
            }
        }
    }

    /// One look at every subscriber of this shard.
    async fn digest_pass(&self) -> Result<(), Fail> {
        let day_ms = self.cfg.digest_day_s.saturating_mul(1000);
        let mut after = None;
        loop {
            let page = self.read(|r| profiles::digest_subscribers(r, after, PAGE))?;
            for &(user_id, digest) in &page {
                let Some(days) = digest.days() else { continue };
                let now = now_ms();
                let due = self.read(|r| due(r, user_id, now, days.saturating_mul(day_ms)))?;
                if let Some(Due {
                    user,
                    counts,
                    newest,
                    was,
                }) = due
                {
                    let email_id = self.next_id();
                    let (subject, body) = communication::digest_email(&user.display_name, &counts);
                    let email =
                        QueuedEmail::new(email_id, user.email, "digest", subject, body, now);
                    let queued = self
                        .partition
                        .write(move |t| {
                            if communication::digest_state_in(t, user_id)? != Some(was) {
                                return Ok::<_, CoreError>(false);
                            }
                            communication::enqueue_email(t, &email)?;
                            communication::record_digest(t, user_id, now, newest)?;
                            Ok(true)
                        })
                        .await?;
                    if queued {
                        self.mail.wake();
                    }
                }
            }
            match page.last() {
                Some(&(last, _)) if page.len() == PAGE => after = Some(last),
                _ => return Ok(()),
            }
            futures_lite::future::yield_now().await;
        }
    }
}

/// Whether `user_id`'s digest (every `period_ms`) is due at `now`, and with what.
fn due(
    r: &nova_storage::redb::ReadTransaction,
    user_id: u64,
    now: u64,
    period_ms: u64,
) -> Result<Option<Due>, CoreError> {
    // Most subscribers are not due: that is one read, without decoding the user.
    let state = communication::digest_state(r, user_id)?;
    if state.is_some_and(|(at, _)| now.saturating_sub(at) < period_ms) {
        return Ok(None);
    }
    // The settings' write records a state when a digest is turned on.
    let Some(was) = state else {
        return Ok(None);
    };
    let Some(user) = identity::user(r, user_id)?.filter(|u| u.email_verified) else {
        return Ok(None);
    };
    let (_, covered) = was;
    let (counts, newest) = notifications::unread_since(r, user_id, covered)?;
    Ok(newest.map(|newest| Due {
        user,
        counts,
        newest,
        was,
    }))
}
