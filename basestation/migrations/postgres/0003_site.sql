-- This station's place among the sites of a deployment, kept with its data so that a restart
-- can undo neither a promotion nor a fence (docs/REPLICATION.md). Nothing about resources.

-- The role: 'primary', 'replica' or 'fenced'. One row, absent in a store never served yet.
CREATE TABLE zbase_site (
    singleton BOOLEAN NOT NULL PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    role      TEXT    NOT NULL CHECK (role IN ('primary', 'replica', 'fenced'))
);

-- The epochs of the history this store holds, and the first sequence of each.
CREATE TABLE zbase_epochs (
    epoch     BIGINT NOT NULL PRIMARY KEY CHECK (epoch > 0),
    first_seq BIGINT NOT NULL CHECK (first_seq > 0)
);
