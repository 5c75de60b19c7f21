"""Every TensorRT Python API name vitrt uses, in one place, with its source (tests only: the tests
check each name against the real bindings, and that the code uses no name missing here).

Checked against NVIDIA's TensorRT Python API reference (docs.nvidia.com/deeplearning/tensorrt/latest/
_static/python-api/) and the samples (github.com/NVIDIA/TensorRT, samples/python/common_runtime.py,
which use cuda-python since 10.14), for TensorRT 10.x and 11.x. The runtime names are also checked by
a test against the ``tensorrt_lean`` package, which imports on a machine without a GPU.

Where 10.x and 11.x differ, the code feature-detects (see the notes).
"""

#: Runtime side (vitrt/backends/tensorrt.py): all present in tensorrt and tensorrt_lean.
RUNTIME_API = {
    "Logger": "trt.Logger(trt.Logger.WARNING): the ILogger the Runtime reports to",
    "Runtime": "trt.Runtime(logger): deserializes plans (constructing it without a GPU does not raise: check first)",
    "Runtime.deserialize_cuda_engine": "bytes -> ICudaEngine, or None on a corrupt or incompatible plan",
    "Runtime.engine_host_code_allowed": "False: refuse plans that embed host code (version-compatible lean plans)",
    "ICudaEngine.num_io_tensors": "number of I/O tensors (TensorRT 10 replaced bindings with named tensors)",
    "ICudaEngine.get_tensor_name": "i -> tensor name",
    "ICudaEngine.get_tensor_mode": "name -> TensorIOMode.INPUT / OUTPUT",
    "ICudaEngine.get_tensor_dtype": "name -> DataType",
    "ICudaEngine.get_tensor_shape": "name -> Dims, -1 for dynamic dimensions",
    "ICudaEngine.get_tensor_profile_shape": "(name, profile) -> [min, opt, max] shapes of an input",
    "ICudaEngine.create_execution_context": "(ExecutionContextAllocationStrategy) -> a context; full TensorRT: one per "
                                            "captured batch size, all on one scratch allocation (USER_MANAGED)",
    "ICudaEngine.device_memory_size_v2": "scratch bytes a context needs (max over profiles): the shared allocation's size",
    "IExecutionContext.set_device_memory": "(pointer, size): the shared scratch; allowed for contexts that never run "
                                           "concurrently (one lock, one stream)",
    "ExecutionContextAllocationStrategy": "USER_MANAGED: the context gets its scratch from set_device_memory",
    "IExecutionContext.set_input_shape": "(name, shape) before each run: the batch size",
    "IExecutionContext.set_tensor_address": "(name, device pointer): set once, buffers never move",
    "IExecutionContext.execute_async_v3": "(stream handle) -> bool: enqueue; False is an error",
    "TensorIOMode": "INPUT / OUTPUT",
    "nptype": "DataType -> numpy type",
    "__version__": "compared with the version in the plan's sidecar (plans load only in the TensorRT that built them)",
}

#: Runtime side, TensorRT-RTX only (NVIDIA/TensorRT-RTX samples/apiUsage/python/api_usage.py): checked
#: against the real ``tensorrt_rtx`` bindings, which import without a GPU.
RTX_RUNTIME_API = {
    "Runtime.engine_header_size": "bytes of the plan header get_engine_validity needs",
    "Runtime.get_engine_validity": "header bytes -> (EngineValidity, EngineInvalidityDiagnostics bits)",
    "EngineValidity": "VALID / SUBOPTIMAL / INVALID",
    "EngineInvalidityDiagnostics": "UNSUPPORTED_CC, VERSION_MISMATCH, OLD_CUDA_DRIVER, ... (bit flags)",
    "ICudaEngine.create_runtime_config": "-> IRuntimeConfig",
    "IRuntimeConfig.create_runtime_cache": "-> IRuntimeCache: the JIT-compiled kernels",
    "IRuntimeConfig.set_runtime_cache": "use that cache for the contexts made from this config",
    "IRuntimeConfig.cuda_graph_strategy": "CudaGraphStrategy.WHOLE_GRAPH_CAPTURE or DISABLED",
    "CudaGraphStrategy": "WHOLE_GRAPH_CAPTURE / DISABLED",
    "IRuntimeCache.serialize": "-> IHostMemory, written beside the plan",
    "IRuntimeCache.deserialize": "bytes -> bool (False: another GPU, driver or version; ignored)",
}

#: Build side (export/trt_build.py): full tensorrt and tensorrt_rtx.
BUILDER_API = {
    "__version__": "major version picks the strongly-typed flag; recorded in the sidecar",
    "Logger": "trt.Logger(trt.Logger.WARNING)",
    "Builder": "trt.Builder(logger)",
    "Builder.create_network": "flags: STRONGLY_TYPED on 10.x; 11.x networks are always strongly typed",
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED": "10.x: precision comes from the graph's types (deprecated in 11)",
    "OnnxParser": "trt.OnnxParser(network, logger)",
    "OnnxParser.parse_from_file": "path -> bool; reads external data beside the model",
    "OnnxParser.num_errors / get_error": "the parser's errors, quoted in vitrt's BuildError",
    "Builder.create_builder_config": "IBuilderConfig",
    "IBuilderConfig.set_memory_pool_limit": "(MemoryPoolType.WORKSPACE, bytes)",
    "MemoryPoolType.WORKSPACE": "the builder's scratch memory pool",
    "IBuilderConfig.builder_optimization_level": "0-5 (default 3)",
    "IBuilderConfig.clear_flag(BuilderFlag.TF32)": "TF32 is on by default; cleared so FP32 stays FP32 (feature-detected)",
    "Builder.create_optimization_profile": "IOptimizationProfile",
    "IOptimizationProfile.set_shape": "(input, min, opt, max)",
    "IBuilderConfig.add_optimization_profile": "profile index",
    "IBuilderConfig.create_timing_cache / set_timing_cache / get_timing_cache": "timing cache reused across builds",
    "ITimingCache.serialize": "-> bytes written atomically to the cache file",
    "__name__": "tensorrt or tensorrt_rtx: which flavour the module is (export/trt_build.py probe)",
    "NetworkDefinitionCreationFlag": "STRONGLY_TYPED (10.x and TensorRT-RTX)",
    "INetworkDefinition.num_inputs / get_input / num_outputs / get_output": "the parsed network's I/O, "
        "checked against the artifact's metadata and recorded in the sidecar",
    "ComputeCapability": "TensorRT-RTX: SM75 ... SM121 (no SM90)",
    "IBuilderConfig.num_compute_capabilities / set_compute_capability": "TensorRT-RTX: the targets",
    "Builder.build_serialized_network": "(network, config) -> IHostMemory, or None on failure",
}

#: Differences between 10.x and 11.x that the code handles.
VERSION_NOTES = {
    "strongly typed": "10.x needs NetworkDefinitionCreationFlag.STRONGLY_TYPED; 11.x is always strongly typed "
                      "(the flag is deprecated): pass it only when the major version is 10",
    "precision flags": "BuilderFlag.FP16/INT8 deprecated in 10.12, removed in 11: never set; precision is in the ONNX",
    "implicit calibrators": "removed in 11: calibration happens in ModelOpt, before TensorRT",
    "tensorrt-rtx": "always strongly typed; no timing cache (it disables CPU-only AOT builds); targets set with "
                    "set_compute_capability; get_engine_validity before deserializing; JIT runtime cache",
}
