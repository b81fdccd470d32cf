"""The build pipeline, one module per named stage, each with typed inputs and outputs:

    load       Recipe                              -> LoadedModel       (checkpoint reference, hash, lazy weights)
    calibrate  LoadedModel + prompts + sampler     -> Recording         (every component's inputs, fp32 pipeline)
    export     LoadedModel + ComponentSpec + shape -> ExportedComponent (torch.export, export-friendly rewrites)
    quantize   ExportedComponent + Recording       -> ExportedComponent (torchao / PT2E per the capability table)
    lower      ExportedComponent + Backend         -> LoweredComponent  (ExecuTorch edge + delegate partitions)
    serialize  LoweredComponent                    -> SerializedComponent (.pte bytes, sha256)
    verify     SerializedComponent + test vectors  -> Verification      (executed on the runtime, or simulated)
    bundle     everything above                    -> a bundle directory + manifest.json (atomic rename)

`mdship.build` runs them in order and caches each output content-addressed (mdship.cache).
"""
