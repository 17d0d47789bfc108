-- This station's place among the sites of a deployment, kept with its data so that a restart
-- can undo neither a promotion nor a fence (docs/REPLICATION.md). Nothing about resources.

-- The role: 'primary', 'replica' or 'fenced'. One row, absent in a store never served yet.
CREATE TABLE site (
    singleton INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    role      TEXT    NOT NULL CHECK (role IN ('primary', 'replica', 'fenced'))
) STRICT;

-- The epochs of the history this store holds, and the first sequence of each: a replica's
-- cache is a prefix of a new primary's history when it holds nothing numbered at or above
-- the sequence where the primary's next epoch began.
CREATE TABLE epochs (
    epoch     INTEGER NOT NULL PRIMARY KEY CHECK (epoch > 0),
    first_seq INTEGER NOT NULL CHECK (first_seq > 0)
) STRICT;
