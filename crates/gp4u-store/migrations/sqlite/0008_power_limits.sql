-- Proof bounds: every GPU's enforced power limit, and the limit each job was assigned with.

-- The GPU's enforced power limit in milliwatts, as its agent declared it (NVML's enforced
-- limit; declared for emulated GPUs). Registration requires it; NULL only for GPUs registered
-- before this column existed, until their agent declares it (it does at every start,
-- PUT /api/providers/{nodeId}/power-limits). Energy proofs bound every reading by it.
ALTER TABLE gpus ADD COLUMN power_limit_mw INTEGER;

-- The assigned GPU's power limit when the job was assigned (sealed with job.assigned): the
-- exact bound of the job's energy proof and the limit its hardware attestation must name.
-- A later change of the GPU's limit applies to later assignments only. NULL: assigned before
-- this column existed, or to a GPU without a registered limit; no energy proof or hardware
-- attestation of such an assignment is accepted.
ALTER TABLE jobs ADD COLUMN gpu_power_limit_mw INTEGER;
