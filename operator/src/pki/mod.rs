//! The operator's own certificate authority: one CA per BaseStation, and the leaf certificate
//! its pods serve on the public port and present to each other for mutual TLS on the internal
//! one.
//!
//! [`plan`] is pure: handed the two Secrets as read (or absent), the names the leaf must carry,
//! a [`Policy`] and the time, it returns what both Secrets must hold now and, for Events, why
//! they changed. It draws fresh keys and serials when it issues; it reads no clock and does no
//! I/O, so every rule is a unit test with `now` moved by hand. Writing the Secrets, and
//! reporting a refusal on the BaseStation, is the caller's.
//!
//! What it promises:
//! - A CA that clients may already trust is never replaced silently: a CA Secret that cannot
//!   be read is refused with [`PkiError::Unreadable`], naming the Secret and the key. Only an
//!   absent (or entirely empty) CA Secret leads to a new CA.
//! - The CA is rotated in two steps, so no pod or client ever meets a leaf from a CA it does
//!   not trust yet. Once the current CA expires within [`Policy::ca_rotate_before`], the next
//!   CA is *published*: it joins the bundle while the current one still signs. Once it has
//!   been published for [`Policy::ca_publish_ahead`] (at the latest halfway from then to the
//!   current CA's expiry) it *switches*: the next CA signs, and the previous one stays in the
//!   bundle for [`Policy::overlap`] after the switch, and never past its own expiry, so a pod
//!   or client still holding a leaf of the previous CA stays trusted while new leaves roll out.
//! - The leaf is re-issued, always with a new key, when it is missing, unreadable, not signed
//!   by the current CA, carries other names or usages, or expires within
//!   [`Policy::leaf_renew_before`]. Otherwise its certificate and key are kept byte for byte;
//!   only the bundle next to it follows the CA Secret.
//! - Planning again from a plan's output at the same `now` changes nothing.
//!
//! Secret layout (keys are constants here, so the caller and the pods' mounts agree):
//! - CA Secret [`ca_secret_name`] (`<station>-ca`): [`CA_CERT`] the current CA (PEM),
//!   [`CA_KEY`] its key (PEM PKCS#8), [`CA_BUNDLE`] every CA to trust now (current first, then
//!   the next one while published, then the previous one during an overlap); while the next
//!   CA is published only, [`CA_NEXT`], [`CA_NEXT_KEY`] and [`CA_PUBLISHED_AT`] (RFC 3339);
//!   during an overlap only, [`CA_PREVIOUS`] (the previous CA's certificate) and
//!   [`CA_ROTATED_AT`] (when it was switched out, RFC 3339).
//! - Leaf Secret [`leaf_secret_name`] (`<station>-tls`): [`TLS_CERT`] the leaf then the CA that
//!   signed it (PEM), [`TLS_KEY`] its key (PEM PKCS#8), [`TLS_TRUST`] the bundle.
//!
//! Both maps are returned whole, holding only these keys: the Secrets are the operator's own.

mod issue;
mod read;
#[cfg(test)]
mod tests;

use read::{Cert, Names, Next, Previous, StoredCa};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

/// CA Secret key: the current CA certificate, PEM.
pub const CA_CERT: &str = "ca.crt";
/// CA Secret key: the current CA's private key, PEM PKCS#8.
pub const CA_KEY: &str = "ca.key";
/// CA Secret key: every CA to trust now, PEM, the current one first.
pub const CA_BUNDLE: &str = "bundle.crt";
/// CA Secret key, during an overlap only: the previous CA certificate, PEM.
pub const CA_PREVIOUS: &str = "previous.crt";
/// CA Secret key, during an overlap only: when the previous CA was rotated out, RFC 3339.
pub const CA_ROTATED_AT: &str = "rotated-at";
/// CA Secret key, while the next CA is published ahead of signing: its certificate, PEM.
pub const CA_NEXT: &str = "next.crt";
/// CA Secret key, while the next CA is published ahead of signing: its key, PEM PKCS#8.
pub const CA_NEXT_KEY: &str = "next.key";
/// CA Secret key, while the next CA is published ahead of signing: since when, RFC 3339.
pub const CA_PUBLISHED_AT: &str = "next-published-at";
/// Leaf Secret key: the leaf certificate then the CA that signed it, PEM.
pub const TLS_CERT: &str = "tls.crt";
/// Leaf Secret key: the leaf's private key, PEM PKCS#8.
pub const TLS_KEY: &str = "tls.key";
/// Leaf Secret key: the bundle of CAs to trust (peers on the internal port, clients).
pub const TLS_TRUST: &str = "ca.crt";

/// The data of a Secret, key to bytes, as the API returns and takes it.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// The CA Secret of a station.
pub fn ca_secret_name(station: &str) -> String {
    format!("{station}-ca")
}

/// The leaf Secret of a station.
pub fn leaf_secret_name(station: &str) -> String {
    format!("{station}-tls")
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// How long certificates live and when they are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A new CA's validity.
    pub ca_lifetime: Duration,
    /// Start rotating the CA (publish the next one) once it expires within this long.
    pub ca_rotate_before: Duration,
    /// How long the next CA is trusted before it signs: long enough for every pod to have
    /// the new bundle mounted, and for clients that copy the bundle to fetch it again.
    pub ca_publish_ahead: Duration,
    /// How long the previous CA stays in the bundle after a rotation; at least the leaf
    /// lifetime, so every leaf it signed expires before it stops being trusted.
    pub overlap: Duration,
    /// A new leaf's validity.
    pub leaf_lifetime: Duration,
    /// Renew the leaf once it expires within this long.
    pub leaf_renew_before: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            ca_lifetime: 3650 * DAY,
            ca_rotate_before: 365 * DAY,
            ca_publish_ahead: 30 * DAY,
            overlap: 90 * DAY,
            leaf_lifetime: 90 * DAY,
            leaf_renew_before: 30 * DAY,
        }
    }
}

impl Policy {
    /// Checks the durations fit together; a policy that does not would renew at every plan,
    /// sign leaves outliving their CA, or drop a CA while leaves it signed are still in use.
    pub fn check(&self) -> Result<(), PkiError> {
        let mut problems = Vec::new();
        if self.leaf_renew_before >= self.leaf_lifetime {
            problems.push("leaf_renew_before must be shorter than leaf_lifetime");
        }
        if self.ca_rotate_before >= self.ca_lifetime {
            problems.push("ca_rotate_before must be shorter than ca_lifetime");
        }
        if self.leaf_lifetime.saturating_add(self.ca_publish_ahead) > self.ca_rotate_before {
            // A leaf issued just before the switch must not outlive the CA that signed it.
            problems.push("leaf_lifetime plus ca_publish_ahead must not exceed ca_rotate_before");
        }
        if self.overlap < self.leaf_lifetime {
            problems.push("overlap must be at least leaf_lifetime");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PkiError::Policy(problems.join("; ")))
        }
    }
}

/// What the two Secrets must hold now, and why they changed.
#[derive(Clone, PartialEq)]
pub struct Plan {
    /// The CA Secret's data.
    pub ca: SecretData,
    /// Whether `ca` differs from the CA Secret handed in (or there was none).
    pub ca_changed: bool,
    /// The leaf Secret's data.
    pub leaf: SecretData,
    /// Whether `leaf` differs from the leaf Secret handed in (or there was none).
    pub leaf_changed: bool,
    /// When the leaf in `leaf` expires.
    pub leaf_not_after: SystemTime,
    /// When the current CA expires.
    pub ca_not_after: SystemTime,
    /// When planning again next changes something (a renewal, a rotation, the end of an
    /// overlap), if nothing else does first.
    pub review_at: SystemTime,
    /// Each change made, for Events; empty when nothing changed.
    pub reasons: Vec<Change>,
}

impl fmt::Debug for Plan {
    // The maps hold private keys: show which keys they have, never their bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("ca", &self.ca.keys().collect::<Vec<_>>())
            .field("ca_changed", &self.ca_changed)
            .field("leaf", &self.leaf.keys().collect::<Vec<_>>())
            .field("leaf_changed", &self.leaf_changed)
            .field("leaf_not_after", &self.leaf_not_after)
            .field("ca_not_after", &self.ca_not_after)
            .field("review_at", &self.review_at)
            .field("reasons", &self.reasons)
            .finish()
    }
}

/// One change a plan made, as an Event says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The Event's reason, one per kind of change: Events of one reason on one object are
    /// folded into a series showing the first note, so kinds must not share a reason.
    pub reason: &'static str,
    /// One sentence saying what changed and why.
    pub note: String,
}

impl Change {
    pub(crate) fn new(reason: &'static str, note: impl Into<String>) -> Change {
        Change {
            reason,
            note: note.into(),
        }
    }
}

/// Event reason: a site CA was created.
pub const CA_CREATED: &str = "SiteCACreated";
/// Event reason: the next site CA joined the trusted bundle.
pub const CA_PUBLISHED: &str = "SiteCAPublished";
/// Event reason: the next site CA started signing.
pub const CA_ROTATED: &str = "SiteCARotated";
/// Event reason: a previous site CA left the trusted bundle.
pub const CA_DROPPED: &str = "SiteCADropped";
/// Event reason: the site certificate was renewed before its expiry.
pub const CERT_RENEWED: &str = "SiteCertificateRenewed";
/// Event reason: the site certificate was issued, or re-issued because it could not be kept.
pub const CERT_ISSUED: &str = "SiteCertificateIssued";
/// Event reason: only the trusted bundle beside the certificate changed.
pub const TRUST_UPDATED: &str = "SiteTrustUpdated";

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The CA Secret exists but a key of it cannot be used; replacing it would silently
    /// break every client that trusts the CA, so the operator stops and says so.
    #[error(
        "Secret {secret}: key {key} {reason}; the operator will not replace a CA that clients \
         may trust: restore the key, or delete the Secret to start a new CA"
    )]
    Unreadable {
        /// The Secret's name.
        secret: String,
        /// The key that cannot be used.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The leaf must carry at least one name.
    #[error("the certificate needs at least one name")]
    NoNames,
    /// A name is neither a DNS name nor an IP address.
    #[error("'{name}' cannot be a certificate name: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The policy's durations do not fit together.
    #[error("certificate policy: {0}")]
    Policy(String),
    /// A time is outside what a certificate can carry.
    #[error("{0} is outside the range a certificate can carry")]
    Time(&'static str),
    /// A key or a certificate could not be made.
    #[error("could not make the {what}: {reason}")]
    Issue {
        /// What was being made.
        what: &'static str,
        /// Why not.
        reason: String,
    },
}

/// Checks that `name` can be a certificate name (a DNS name, a `*.` wildcard, or an IP
/// address), so a spec can be refused before any plan.
pub fn check_name(name: &str) -> Result<(), PkiError> {
    Names::parse(&[name.to_string()]).map(|_| ())
}

/// How many X.509 certificates the PEM `text` holds, stopping at the first block that is not
/// one: a trust bundle with none, or with garbage, is refused before any pod mounts it.
pub fn count_certificates(text: &str) -> usize {
    let mut count = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()) {
        match block {
            Ok(pem) if pem.label == "CERTIFICATE" && pem.parse_x509().is_ok() => count += 1,
            _ => return 0,
        }
    }
    count
}

/// Plans the CA and leaf Secrets of `station` at `now`: see the module documentation for the
/// rules. `names` are the leaf's names (DNS names, or IP addresses), the first also its CN.
pub fn plan(
    station: &str,
    names: &[String],
    ca: Option<&SecretData>,
    leaf: Option<&SecretData>,
    policy: &Policy,
    now: SystemTime,
) -> Result<Plan, PkiError> {
    policy.check()?;
    // Certificates carry whole seconds; comparing at the same precision keeps a plan made at
    // `now` stable when replanned at `now`.
    let now = read::whole_seconds(now);
    let names = Names::parse(names)?;
    let mut reasons = Vec::new();
    let ca_secret = ca_secret_name(station);

    // An empty map is a Secret with nothing in it: no CA anyone could trust is lost.
    let stored = match ca {
        Some(data) if !data.is_empty() => Some(StoredCa::read(data, &ca_secret)?),
        _ => None,
    };
    let (mut current, mut next, mut previous) = match stored {
        None => {
            let ca = issue::new_ca(station, policy.ca_lifetime, now)?;
            reasons.push(Change::new(
                CA_CREATED,
                format!(
                    "created the site CA (valid until {})",
                    stamp(ca.cert.not_after)
                ),
            ));
            (ca, None, None)
        }
        Some(stored) => (stored.current, stored.next, stored.previous),
    };

    // Rotation, step one: trust the next CA before it signs anything.
    if next.is_none() && expires_within(&current.cert, now, policy.ca_rotate_before) {
        let published = Next {
            authority: issue::new_ca(station, policy.ca_lifetime, now)?,
            published_at: now,
            published_at_text: stamp(now).into_bytes(),
        };
        reasons.push(Change::new(
            CA_PUBLISHED,
            format!(
                "published the next site CA in the trusted bundle (the current one expires \
                 {}); it signs from {}",
                stamp(current.cert.not_after),
                stamp(published.signs_from(&current.cert, policy)),
            ),
        ));
        next = Some(published);
    }
    // Step two: the next CA signs; the current one is trusted for the overlap.
    if let Some(taking_over) = next.take_if(|n| now >= n.signs_from(&current.cert, policy)) {
        if previous.is_some() {
            // Only when a policy rotates more often than it overlaps; the defaults never do.
            reasons.push(Change::new(
                CA_DROPPED,
                "dropped the CA before the previous one from the bundle: a second rotation \
                 came within its overlap",
            ));
        }
        let rotated_out = std::mem::replace(&mut current, taking_over.authority);
        let rotated = Previous {
            pem: read::pem(&rotated_out.cert.der).into_bytes(),
            cert: rotated_out.cert,
            rotated_at: now,
            rotated_at_text: stamp(now).into_bytes(),
        };
        reasons.push(Change::new(
            CA_ROTATED,
            format!(
                "rotated the site CA: the next one signs from now (valid until {}); the \
                 previous one stays trusted until {}",
                stamp(current.cert.not_after),
                stamp(rotated.trusted_until(policy)),
            ),
        ));
        previous = Some(rotated);
    }

    if let Some(old) = &previous
        && now >= old.trusted_until(policy)
    {
        reasons.push(Change::new(
            CA_DROPPED,
            format!(
                "dropped the previous site CA from the trusted bundle: {}",
                if now >= old.cert.not_after {
                    "it expired"
                } else {
                    "the overlap after the rotation ended"
                }
            ),
        ));
        previous = None;
    }

    let mut bundle = read::pem(&current.cert.der);
    if let Some(next) = &next {
        bundle.push_str(&read::pem(&next.authority.cert.der));
    }
    if let Some(previous) = &previous {
        bundle.push_str(&read::pem(&previous.cert.der));
    }
    let mut ca_out = SecretData::new();
    ca_out.insert(CA_CERT.to_string(), current.cert_pem.clone());
    ca_out.insert(CA_KEY.to_string(), current.key_pem.clone());
    ca_out.insert(CA_BUNDLE.to_string(), bundle.clone().into_bytes());
    if let Some(next) = &next {
        ca_out.insert(CA_NEXT.to_string(), next.authority.cert_pem.clone());
        ca_out.insert(CA_NEXT_KEY.to_string(), next.authority.key_pem.clone());
        ca_out.insert(CA_PUBLISHED_AT.to_string(), next.published_at_text.clone());
    }
    if let Some(previous) = &previous {
        ca_out.insert(CA_PREVIOUS.to_string(), previous.pem.clone());
        ca_out.insert(CA_ROTATED_AT.to_string(), previous.rotated_at_text.clone());
    }

    let kept = match leaf {
        None => Err(Change::new(
            CERT_ISSUED,
            format!("issued the certificate for {names}"),
        )),
        Some(data) => read::check_leaf(data, &current.cert, &names, policy, now),
    };
    let mut leaf_out = SecretData::new();
    let leaf_not_after = match kept {
        Ok(kept) => {
            leaf_out.insert(TLS_CERT.to_string(), kept.cert_pem);
            leaf_out.insert(TLS_KEY.to_string(), kept.key_pem);
            kept.not_after
        }
        Err(mut why) => {
            let issued = issue::new_leaf(&names, &current.signer, policy.leaf_lifetime, now)?;
            why.note = format!("{}; valid until {}", why.note, stamp(issued.cert.not_after));
            reasons.push(why);
            let mut chain = issued.cert_pem.clone();
            chain.extend_from_slice(read::pem(&current.cert.der).as_bytes());
            leaf_out.insert(TLS_CERT.to_string(), chain);
            leaf_out.insert(TLS_KEY.to_string(), issued.key_pem);
            issued.cert.not_after
        }
    };
    leaf_out.insert(TLS_TRUST.to_string(), bundle.into_bytes());

    let leaf_changed = leaf != Some(&leaf_out);
    if leaf_changed && leaf.and_then(|l| l.get(TLS_CERT)) == leaf_out.get(TLS_CERT) {
        reasons.push(Change::new(
            TRUST_UPDATED,
            "updated the trusted CAs next to the certificate",
        ));
    }
    let mut review_at = [
        leaf_not_after.checked_sub(policy.leaf_renew_before),
        current.cert.not_after.checked_sub(policy.ca_rotate_before),
        next.as_ref().map(|n| n.signs_from(&current.cert, policy)),
        previous.as_ref().map(|p| p.trusted_until(policy)),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(leaf_not_after);
    // A plan made now has already acted on everything due now.
    if review_at <= now {
        review_at = now + Duration::from_secs(1);
    }
    Ok(Plan {
        review_at,
        ca_changed: ca != Some(&ca_out),
        ca: ca_out,
        leaf_changed,
        leaf: leaf_out,
        leaf_not_after,
        ca_not_after: current.cert.not_after,
        reasons,
    })
}

/// Whether `cert` expires within `window` of `now` (or has expired).
fn expires_within(cert: &Cert, now: SystemTime, window: Duration) -> bool {
    now.checked_add(window)
        .is_none_or(|horizon| cert.not_after <= horizon)
}

/// A time as Events show it, and as `rotated-at` stores it.
fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
