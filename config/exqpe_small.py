# ExQPE "S" (Table 8): config/expe_small.py with pe='exqpe'.
from config.expe_small import *  # noqa: F401,F403
out_dir = 'out/exqpe_small'
pe = 'exqpe'
