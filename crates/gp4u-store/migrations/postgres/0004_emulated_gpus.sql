-- GPUs declared without hardware (the agent's `--gpu emulated:…`), marked as such everywhere.
ALTER TABLE gpus ADD COLUMN emulated BIGINT NOT NULL DEFAULT 0;
