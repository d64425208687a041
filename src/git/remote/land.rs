//! The fence at a remote origin: a landing is one `git push --atomic` that moves the
//! branch and `refs/mesh/fence/<story>` together, each under
//! `--force-with-lease=<ref>:<value seen>` (empty: must not exist). The server applies
//! both or neither, and refuses both if either ref moved since we read it: the
//! compare-and-swap makes the server the judge, as git's ref locks do for a local origin
//! (`crate::fence`).
//!
//! The decision itself is [`token_check`] on the record fetched just before the push, in
//! the same blob format `crate::fence` writes (its `to_blob`/`parse`), so a record made
//! by either is read by the other. A lost lease means someone else's write came first:
//! fetch, decide again ([`MAX_LEASE_TRIES`]): a higher token now recorded →
//! [`Refused::StaleToken`], the story landed meanwhile → [`Refused::AlreadyLanded`],
//! main moved → [`Refused::NotFastForward`] (the caller rebases and lands again).

use super::{tracking_ref, PushOutcome, Remote, RemoteError};
use crate::core::fence::{token_check, FenceToken};
use crate::fence::{check_holder, fence_ref, FenceRecord, Refused};
use git2::{ObjectType, Oid, Repository};
use std::path::Path;

/// How many times a landing re-reads and pushes again after losing a lease to a write
/// that left its token valid, before giving up with [`RemoteError::Contended`].
pub const MAX_LEASE_TRIES: u32 = 3;

fn bad_name(e: crate::fence::FenceError) -> RemoteError {
    RemoteError::BadName(e.to_string())
}

/// What a landing read at the origin just before its push: the values the leases expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandPlan {
    pub story: String,
    pub token: FenceToken,
    pub holder: String,
    pub branch_ref: String,
    /// The branch at the origin when read (`None`: it does not exist yet).
    pub main: Option<Oid>,
    /// The fence ref's blob when read, and what it says.
    pub fence_blob: Option<Oid>,
    pub record: Option<FenceRecord>,
}

/// A story's fence and the branch as the origin has them (after a fetch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceView {
    /// The branch (`None`: it does not exist).
    pub main: Option<Oid>,
    /// The fence ref's blob, and what it says.
    pub fence_blob: Option<Oid>,
    pub record: Option<FenceRecord>,
}

/// What one landing push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landing {
    /// The branch and the fence moved together (or this same landing already had).
    Landed,
    /// The fence refused (nothing was pushed).
    Refused(Refused),
    /// The origin changed since the plan was read; nothing was written. Plan again.
    LeaseLost { reference: String },
}

impl Remote {
    fn local<'a>(
        &self,
        op: &'static str,
        path: &'a Path,
    ) -> impl Fn(git2::Error) -> RemoteError + 'a {
        move |source| RemoteError::Local {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Fetches, then reads the story's fence record and the branch as the origin has
    /// them now.
    pub fn read_fence(
        &self,
        clone: &Path,
        story: &str,
        branch_ref: &str,
    ) -> Result<FenceView, RemoteError> {
        let name = fence_ref(story).map_err(bad_name)?;
        self.fetch(clone, branch_ref)?;
        let repo = Repository::open_bare(clone).map_err(self.local("open the clone", clone))?;
        let target = |r: &str| match repo.refname_to_id(r) {
            Ok(oid) => Ok(Some(oid)),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(self.local("read a tracking ref", clone)(e)),
        };
        let main = target(&tracking_ref(branch_ref))?;
        let Some(blob) = target(&tracking_ref(&name))? else {
            return Ok(FenceView {
                main,
                fence_blob: None,
                record: None,
            });
        };
        let corrupt = |why: String| RemoteError::Corrupt {
            url: self.url().to_string(),
            reference: name.clone(),
            why,
        };
        let object = repo.find_object(blob, None).map_err(|e| {
            corrupt(format!(
                "its target {blob} was not fetched: {}",
                e.message()
            ))
        })?;
        if object.kind() != Some(ObjectType::Blob) {
            return Err(corrupt(format!(
                "it points to a {:?}, not a blob",
                object.kind()
            )));
        }
        let content = object
            .as_blob()
            .map(|b| b.content().to_vec())
            .unwrap_or_default();
        let record = FenceRecord::parse(&content).map_err(corrupt)?;
        Ok(FenceView {
            main,
            fence_blob: Some(blob),
            record: Some(record),
        })
    }

    /// Fetches and decides: the plan to push, or the fence's refusal.
    pub fn prepare_landing(
        &self,
        clone: &Path,
        story: &str,
        token: FenceToken,
        holder: &str,
        branch_ref: &str,
    ) -> Result<Result<LandPlan, Refused>, RemoteError> {
        check_holder(holder).map_err(bad_name)?;
        let FenceView {
            main,
            fence_blob,
            record,
        } = self.read_fence(clone, story, branch_ref)?;
        if let Some(refused) = token_check(record.as_ref(), token, holder) {
            return Ok(Err(refused));
        }
        Ok(Ok(LandPlan {
            story: story.to_string(),
            token,
            holder: holder.to_string(),
            branch_ref: branch_ref.to_string(),
            main,
            fence_blob,
            record,
        }))
    }

    /// Pushes `new_main` (a commit in the clone that descends from the plan's main) and
    /// the fence record `landed new_main` in one atomic push under both leases.
    pub fn push_landing(
        &self,
        clone: &Path,
        plan: &LandPlan,
        new_main: Oid,
    ) -> Result<Landing, RemoteError> {
        if let Some(FenceRecord {
            token,
            landed: Some(commit),
            ..
        }) = &plan.record
        {
            // token_check let it through: this holder repeating its own landing, which
            // is done if it landed this commit, and refused otherwise.
            return Ok(if *commit == new_main {
                Landing::Landed
            } else {
                Landing::Refused(Refused::AlreadyLanded {
                    token: *token,
                    commit: *commit,
                })
            });
        }
        let repo = Repository::open_bare(clone).map_err(self.local("open the clone", clone))?;
        if let Some(main) = plan.main {
            let descends = main == new_main
                || repo
                    .graph_descendant_of(new_main, main)
                    .map_err(self.local("compare commits", clone))?;
            if !descends {
                return Ok(Landing::Refused(Refused::NotFastForward { main }));
            }
        }
        let record = FenceRecord {
            token: plan.token,
            holder: plan.holder.clone(),
            landed: Some(new_main),
        };
        let blob = repo
            .blob(record.to_blob().as_bytes())
            .map_err(self.local("write the fence blob", clone))?;
        self.push_fenced(clone, plan, Some(new_main), blob)
    }

    /// Records the plan's token without landing (the fence ref alone, under its lease).
    pub fn push_record(&self, clone: &Path, plan: &LandPlan) -> Result<Landing, RemoteError> {
        if plan
            .record
            .as_ref()
            .is_some_and(|r| r.landed.is_some() || r.token == plan.token)
        {
            return Ok(Landing::Landed);
        }
        let repo = Repository::open_bare(clone).map_err(self.local("open the clone", clone))?;
        let record = FenceRecord {
            token: plan.token,
            holder: plan.holder.clone(),
            landed: None,
        };
        let blob = repo
            .blob(record.to_blob().as_bytes())
            .map_err(self.local("write the fence blob", clone))?;
        self.push_fenced(clone, plan, None, blob)
    }

    fn push_fenced(
        &self,
        clone: &Path,
        plan: &LandPlan,
        new_main: Option<Oid>,
        blob: Oid,
    ) -> Result<Landing, RemoteError> {
        let fence = fence_ref(&plan.story).map_err(bad_name)?;
        let lease = |r: &str, v: Option<Oid>| {
            format!(
                "--force-with-lease={r}:{}",
                v.map(|o| o.to_string()).unwrap_or_default()
            )
        };
        let mut flags = vec!["--atomic".to_string(), lease(&fence, plan.fence_blob)];
        let mut specs = vec![format!("{blob}:{fence}")];
        if let Some(new_main) = new_main {
            flags.push(lease(&plan.branch_ref, plan.main));
            specs.insert(0, format!("{new_main}:{}", plan.branch_ref));
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        let op = if new_main.is_some() {
            "land"
        } else {
            "record a fence"
        };
        match self.push(clone, op, &flags, &specs)? {
            PushOutcome::Done => Ok(Landing::Landed),
            PushOutcome::LeaseLost { reference } => Ok(Landing::LeaseLost { reference }),
        }
    }

    /// Lands `new_main` on `branch_ref` for `story` under `token`: plan, push, and on a
    /// lost lease plan again (see the module doc). `Ok(Err(_))` is the fence refusing,
    /// `NotFastForward` included (rebase onto the `main` it names and land again).
    pub fn land(
        &self,
        clone: &Path,
        story: &str,
        token: FenceToken,
        holder: &str,
        branch_ref: &str,
        new_main: Oid,
    ) -> Result<Result<(), Refused>, RemoteError> {
        self.with_leases(clone, story, token, holder, branch_ref, |plan| {
            self.push_landing(clone, plan, new_main)
        })
    }

    /// Records `token` for `story` at the origin's fence without landing (the same rule).
    pub fn record(
        &self,
        clone: &Path,
        story: &str,
        token: FenceToken,
        holder: &str,
    ) -> Result<Result<(), Refused>, RemoteError> {
        self.with_leases(clone, story, token, holder, "refs/heads/main", |plan| {
            self.push_record(clone, plan)
        })
    }

    fn with_leases(
        &self,
        clone: &Path,
        story: &str,
        token: FenceToken,
        holder: &str,
        branch_ref: &str,
        push: impl Fn(&LandPlan) -> Result<Landing, RemoteError>,
    ) -> Result<Result<(), Refused>, RemoteError> {
        for _ in 0..MAX_LEASE_TRIES {
            let plan = match self.prepare_landing(clone, story, token, holder, branch_ref)? {
                Ok(plan) => plan,
                Err(refused) => return Ok(Err(refused)),
            };
            match push(&plan)? {
                Landing::Landed => return Ok(Ok(())),
                Landing::Refused(refused) => return Ok(Err(refused)),
                Landing::LeaseLost { reference } => {
                    tracing::debug!(
                        story,
                        reference,
                        "lease lost at the origin; reading it again"
                    )
                }
            }
        }
        Err(RemoteError::Contended {
            url: self.url().to_string(),
            tries: MAX_LEASE_TRIES,
        })
    }
}
