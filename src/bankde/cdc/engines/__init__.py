"""Alternative capture engines behind the CaptureEngine contract (the native one is cdc.native)."""
