"""kiln's int8 compiler: quantized matmuls as integer kernels on the CPU's int8 dot instructions.

intrinsics (the x86 dot instructions, kiln's own), packing (weights in their layout), dense (the integer
kernel), qdq (the Relax pass that lowers quantized graphs to it), space (its tuning search space)."""
