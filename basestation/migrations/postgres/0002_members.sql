-- Station pods sharing this database. Each pod holds a lease (expires_at, on the database's
-- clock) that it renews; a pod whose lease lapsed is removed by whichever pod sees it first.
-- Every pod's write transactions start by locking its own row FOR KEY SHARE and checking
-- its lease, so removing a pod (DELETE, which conflicts with that lock) waits for its last
-- write to commit, and no write of a removed pod can commit after (see cluster/membership.rs).
CREATE TABLE zbase_members (
    pod         TEXT        NOT NULL PRIMARY KEY,
    -- Random per process start: a restarted pod with the same name is a new member, and
    -- the old process (if it still runs somewhere) can no longer write.
    incarnation TEXT        NOT NULL,
    address     TEXT        NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    leaving     BOOLEAN     NOT NULL DEFAULT FALSE,
    acked       BIGINT      NOT NULL DEFAULT 0
);

-- Bumped on every join, leave and expiry: the views pods route by, and acknowledge.
CREATE TABLE zbase_membership (
    singleton  BOOLEAN NOT NULL PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    generation BIGINT  NOT NULL CHECK (generation > 0)
);
INSERT INTO zbase_membership (singleton, generation) VALUES (TRUE, 1);
