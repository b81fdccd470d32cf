"""The build pipeline, one module per named stage, each a function with a typed output:

    calibrate  Checkpoint + prompts + sampler      -> Recording           (every component's inputs, fp32 pipeline)
    export     component + precision + inputs      -> ExportedComponent   (torch.export after export rewrites)
    quantize   component + ComponentSpec + Backend -> ExportedComponent   (torchao / PT2E per mdship.capabilities)
    lower      ExportedComponent + partitioners    -> LoweredComponent    (ExecuTorch edge + delegates, coverage)
    serialize  LoweredComponent                    -> SerializedComponent (.pte bytes, sha256)
    verify     .pte or simulated twin + vectors    -> Verification        (executed on the runtime, or simulated)
    fidelity   programs + eval prompts             -> image PSNR / SSIM vs the fp32 pipeline; the fp16 guard
    bundle     the target's results                -> Manifest + the bundle directory (atomic rename)
    device     the bundle + a device lane          -> DeviceVerification  (arm64 under qemu, per CPU model)
    sensitivity  checkpoint + recipe + Backend     -> Sensitivity         (`mdship tune`: bytes and error per layer x format)

The checkpoint itself is `mdship.checkpoint.Checkpoint.open` (lazy: no weights until a stage needs them).
`mdship.build` runs the stages per target and component through the content-addressed cache (mdship.cache):
calibrate (key: checkpoint, prompts, sampler), export..verify as one "program" entry per component (key:
checkpoint, component spec, target options, inputs), fidelity (key: the programs' sha256s), and the fp32
reference images (key: checkpoint, prompts, sampler), device (key: the bundle's files, the lane's runner and
emulator).
"""
