-- Lineage: what each model version was made from, so it can be explained and rebuilt. The window
-- its training rows span, a hash of the training set (training/lineage.py: stable across row order
-- and pandas versions), the code revision (git commit, else the package version) and the exact
-- versions of the packages the model needs. bento_uri: the exported Bento in the artifact store,
-- from which `driftloop image` rebuilds the image on a machine whose BentoML store lacks it.
ALTER TABLE model_versions
    ADD COLUMN data_start    timestamptz,
    ADD COLUMN data_end      timestamptz,
    ADD COLUMN data_sha256   text,
    ADD COLUMN data_rows     integer,
    ADD COLUMN code_revision text,
    ADD COLUMN packages      jsonb,
    ADD COLUMN bento_uri     text;
