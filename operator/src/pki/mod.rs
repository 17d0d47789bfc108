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
//! - The CA is rotated once it expires within [`Policy::ca_rotate_before`]. The previous CA
//!   stays in the bundle for [`Policy::overlap`] after the rotation, and never past its own
//!   expiry, so a pod or client still holding a leaf of the previous CA stays trusted while
//!   the new leaves roll out.
//! - The leaf is re-issued, always with a new key, when it is missing, unreadable, not signed
//!   by the current CA, carries other names or usages, or expires within
//!   [`Policy::leaf_renew_before`]. Otherwise its certificate and key are kept byte for byte;
//!   only the bundle next to it follows the CA Secret.
//! - Planning again from a plan's output at the same `now` changes nothing.
//!
//! Secret layout (keys are constants here, so the caller and the pods' mounts agree):
//! - CA Secret [`ca_secret_name`] (`<station>-ca`): [`CA_CERT`] the current CA (PEM),
//!   [`CA_KEY`] its key (PEM PKCS#8), [`CA_BUNDLE`] every CA to trust now (current first, then
//!   the previous one during an overlap), and during an overlap only [`CA_PREVIOUS`] (the
//!   previous CA's certificate) and [`CA_ROTATED_AT`] (when it was rotated, RFC 3339).
//! - Leaf Secret [`leaf_secret_name`] (`<station>-tls`): [`TLS_CERT`] the leaf then the CA that
//!   signed it (PEM), [`TLS_KEY`] its key (PEM PKCS#8), [`TLS_TRUST`] the bundle.
//!
//! Both maps are returned whole, holding only these keys: the Secrets are the operator's own.

mod issue;
mod read;
#[cfg(test)]
mod tests;

use read::{Cert, Names, Previous, StoredCa};
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
    /// Rotate the CA once it expires within this long.
    pub ca_rotate_before: Duration,
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
        if self.leaf_lifetime > self.ca_rotate_before {
            // A leaf issued just before the rotation must not outlive the CA that signed it.
            problems.push("leaf_lifetime must not exceed ca_rotate_before");
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
    /// One sentence per change, for Events; empty when nothing changed.
    pub reasons: Vec<String>,
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
            .field("reasons", &self.reasons)
            .finish()
    }
}

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
    let mut current = match stored {
        None => {
            let (ca, signer) = issue::new_ca(station, policy.ca_lifetime, now)?;
            reasons.push(format!(
                "created the site CA (valid until {})",
                stamp(ca.cert.not_after)
            ));
            Current {
                cert_pem: ca.cert_pem,
                key_pem: ca.key_pem,
                cert: ca.cert,
                signer,
                previous: None,
            }
        }
        Some(stored) if expires_within(&stored.cert, now, policy.ca_rotate_before) => {
            let (ca, signer) = issue::new_ca(station, policy.ca_lifetime, now)?;
            if stored.previous.is_some() {
                // Only when a policy rotates more often than it overlaps; the defaults never do.
                reasons.push(
                    "dropped the CA before the previous one from the bundle: a second rotation \
                     came within its overlap"
                        .to_string(),
                );
            }
            let previous = Previous {
                pem: read::pem(&stored.cert.der).into_bytes(),
                cert: stored.cert,
                rotated_at: now,
                rotated_at_text: stamp(now).into_bytes(),
            };
            reasons.push(format!(
                "rotated the site CA (the previous one expires {}); the previous one stays \
                 trusted until {}",
                stamp(previous.cert.not_after),
                stamp(previous.trusted_until(policy)),
            ));
            Current {
                cert_pem: ca.cert_pem,
                key_pem: ca.key_pem,
                cert: ca.cert,
                signer,
                previous: Some(previous),
            }
        }
        Some(stored) => Current {
            cert_pem: stored.cert_pem,
            key_pem: stored.key_pem,
            cert: stored.cert,
            signer: stored.signer,
            previous: stored.previous,
        },
    };

    if let Some(previous) = &current.previous
        && now >= previous.trusted_until(policy)
    {
        reasons.push(format!(
            "dropped the previous site CA from the trusted bundle: {}",
            if now >= previous.cert.not_after {
                "it expired"
            } else {
                "the overlap after the rotation ended"
            }
        ));
        current.previous = None;
    }

    let mut bundle = read::pem(&current.cert.der);
    if let Some(previous) = &current.previous {
        bundle.push_str(&read::pem(&previous.cert.der));
    }
    let mut ca_out = SecretData::new();
    ca_out.insert(CA_CERT.to_string(), current.cert_pem.clone());
    ca_out.insert(CA_KEY.to_string(), current.key_pem.clone());
    ca_out.insert(CA_BUNDLE.to_string(), bundle.clone().into_bytes());
    if let Some(previous) = &current.previous {
        ca_out.insert(CA_PREVIOUS.to_string(), previous.pem.clone());
        ca_out.insert(CA_ROTATED_AT.to_string(), previous.rotated_at_text.clone());
    }

    let kept = match leaf {
        None => Err(format!("issued the certificate for {names}")),
        Some(data) => read::check_leaf(data, &current.cert, &names, policy, now),
    };
    let mut leaf_out = SecretData::new();
    let leaf_not_after = match kept {
        Ok(kept) => {
            leaf_out.insert(TLS_CERT.to_string(), kept.cert_pem);
            leaf_out.insert(TLS_KEY.to_string(), kept.key_pem);
            kept.not_after
        }
        Err(why) => {
            let issued = issue::new_leaf(&names, &current.signer, policy.leaf_lifetime, now)?;
            reasons.push(format!(
                "{why}; valid until {}",
                stamp(issued.cert.not_after)
            ));
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
        reasons.push("updated the trusted CAs next to the certificate".to_string());
    }
    Ok(Plan {
        ca_changed: ca != Some(&ca_out),
        ca: ca_out,
        leaf_changed,
        leaf: leaf_out,
        leaf_not_after,
        ca_not_after: current.cert.not_after,
        reasons,
    })
}

/// The CA that signs from now on, and the previous one while it is still trusted.
struct Current {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    cert: Cert,
    signer: issue::Signer,
    previous: Option<Previous>,
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
