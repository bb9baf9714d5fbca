"""The compiler flags of csrc/ssm.c, in one place (setup.py reads this file; native.py
imports it). No imports: setup.py runs it before nacz or its dependencies are installed.

The flags are part of the numerics (docs/design.md): no FMA contraction, no fast-math, no
-march (the library must not depend on the build CPU; the x86-64 build carries an AVX2
clone selected at run time, see csrc/ssm.c), no OpenMP. -fno-math-errno (no errno from
sqrtf) and -fno-trapping-math (no FP traps assumed, as LLVM/numba assume) change no value;
they let GCC vectorise the selects.
"""

GCC_FLAGS = ("-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno",
             "-fno-trapping-math", "-std=gnu11")
MSVC_FLAGS = ("/O2", "/fp:precise", "/fp:contract-")
# a shared library built directly (native.compile_c); setuptools adds -fPIC itself
CFLAGS = GCC_FLAGS + ("-fPIC",)
