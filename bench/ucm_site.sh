# Source it (on the GPU machine, from the repo root): the pure-Python wheels of .whl/ (omegaconf, hydra-core,
# antlr4, cachetools) unzipped once per machine to /tmp/ucm_site (parallel jobs must not rewrite it), and
# that folder and this checkout put on PYTHONPATH (ucm is not pip-installed there).
if [ ! -f /tmp/ucm_site/.complete ]; then
  for w in .whl/*.whl; do python3 -m zipfile -e "$w" /tmp/ucm_site || return 1; done
  touch /tmp/ucm_site/.complete
fi
export PYTHONPATH="/tmp/ucm_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
