//! Rows as both database backends read them, turned into the store's types in one place.

use super::{Change, Seq, StoreError, StoredResource};
use bytes::Bytes;
use zbase_proto::wire::ResourceId;

/// `SELECT jwk, snapshot, seq` of one resource.
pub(super) type ResourceRow = (String, Option<Vec<u8>>, i64);

/// `SELECT seq, id, jwk, snapshot` of one change.
pub(super) type ChangeRow = (i64, String, String, Option<Vec<u8>>);

/// A resource row as the store hands it out.
pub(super) fn stored((jwk, snapshot, seq): ResourceRow) -> Result<StoredResource, StoreError> {
    Ok(StoredResource {
        jwk,
        snapshot: snapshot.map(Bytes::from),
        seq: seq_from_sql(seq)?,
    })
}

/// A change row as the store hands it out.
pub(super) fn change((seq, id, jwk, snapshot): ChangeRow) -> Result<Change, StoreError> {
    Ok(Change {
        seq: seq_from_sql(seq)?,
        id: ResourceId::parse(&id)
            .map_err(|e| StoreError::Corrupt(format!("a stored identifier is invalid: {e}")))?,
        jwk,
        snapshot: snapshot.map(Bytes::from),
    })
}

/// `changes_since`'s arguments as SQL integers. Past the largest stored value both simply
/// mean "everything" or "nothing".
pub(super) fn change_bounds(after: Seq, limit: usize) -> (i64, i64) {
    (
        i64::try_from(after).unwrap_or(i64::MAX),
        i64::try_from(limit).unwrap_or(i64::MAX),
    )
}

/// A stored sequence, which the writers never make negative.
pub(super) fn seq_from_sql(seq: i64) -> Result<Seq, StoreError> {
    Seq::try_from(seq)
        .map_err(|_| StoreError::Corrupt(format!("a stored change sequence is negative ({seq})")))
}

/// A restore's insert error: a resource twice in one backup says so, anything else is the
/// database's.
pub(super) fn restore_error(change: &Change, error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Corrupt(format!(
            "the backup holds resource {} or sequence {} twice",
            change.id, change.seq
        )),
        _ => StoreError::Database(error),
    }
}

/// A read's error: a closed pool is the store being closed, anything else the database's.
pub(super) fn read_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::PoolClosed => StoreError::Closed,
        error => StoreError::Database(error),
    }
}

/// An epoch as the database keeps it.
pub(super) fn epoch_to_sql(epoch: &super::Epoch) -> Result<(i64, i64), sqlx::Error> {
    match (i64::try_from(epoch.epoch), i64::try_from(epoch.first_seq)) {
        (Ok(number), Ok(first)) => Ok((number, first)),
        _ => Err(sqlx::Error::Protocol(format!(
            "epoch {} starting at {} is out of range",
            epoch.epoch, epoch.first_seq
        ))),
    }
}

/// The site row and epoch rows as a [`super::Site`].
pub(super) fn site(role: &str, epochs: &[(i64, i64)]) -> Result<super::Site, StoreError> {
    let role = super::Role::from_name(role)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown site role {role:?}")))?;
    let epochs = epochs
        .iter()
        .map(|&(epoch, first_seq)| {
            Ok(super::Epoch {
                epoch: u64::try_from(epoch)
                    .map_err(|_| StoreError::Corrupt(format!("epoch {epoch} is negative")))?,
                first_seq: seq_from_sql(first_seq)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(super::Site { role, epochs })
}
