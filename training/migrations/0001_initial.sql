-- The feedback store and the loop's records.

CREATE TABLE predictions (
    request_id    text PRIMARY KEY,
    model_name    text NOT NULL,
    model_version text NOT NULL,
    features      jsonb NOT NULL,
    score         double precision NOT NULL,
    label         smallint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX predictions_model_time ON predictions (model_name, created_at);

-- One row per request: a later label for the same request replaces the earlier one (corrections
-- happen), and `revisions` counts how often it changed.
CREATE TABLE feedback (
    request_id  text PRIMARY KEY REFERENCES predictions (request_id),
    label       smallint NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    revisions   integer NOT NULL DEFAULT 0
);

CREATE TABLE drift_runs (
    id            bigserial PRIMARY KEY,
    model_name    text NOT NULL,
    run_key       text NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    champion_tag  text,
    rows          integer NOT NULL,
    labelled_rows integer NOT NULL,
    drift_share   double precision,
    drifted       boolean,
    columns       jsonb NOT NULL DEFAULT '{}',
    performance   jsonb NOT NULL DEFAULT '{}',
    dataset_uri   text,
    report_uri    text,
    decision      text,
    reason        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_name, run_key)
);

CREATE TABLE training_runs (
    id             bigserial PRIMARY KEY,
    model_name     text NOT NULL,
    run_key        text NOT NULL,
    drift_run_id   bigint REFERENCES drift_runs (id),
    status         text NOT NULL CHECK (status IN ('skipped', 'trained', 'promoted', 'rejected', 'failed')),
    reason         text,
    champion_tag   text,
    challenger_tag text,
    metrics        jsonb NOT NULL DEFAULT '{}',
    gates          jsonb NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    UNIQUE (model_name, run_key)
);

CREATE TABLE model_versions (
    id              bigserial PRIMARY KEY,
    model_name      text NOT NULL,
    version         integer NOT NULL,
    tag             text NOT NULL UNIQUE,
    status          text NOT NULL CHECK (status IN ('candidate', 'champion', 'retired', 'rejected')),
    training_run_id bigint REFERENCES training_runs (id),
    metrics         jsonb NOT NULL DEFAULT '{}',
    train_data_uri  text NOT NULL,
    bento_tag       text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    promoted_at     timestamptz,
    UNIQUE (model_name, version)
);
-- At most one champion per model: promotion is one transaction that retires the old one first.
CREATE UNIQUE INDEX one_champion_per_model ON model_versions (model_name) WHERE status = 'champion';

CREATE TABLE deployments (
    id          bigserial PRIMARY KEY,
    model_name  text NOT NULL,
    model_tag   text NOT NULL,
    bento_tag   text NOT NULL,
    target      text NOT NULL,
    status      text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
