# ExQPE "M" (Table 8): config/expe_medium.py with pe='exqpe'.
from config.expe_medium import *  # noqa: F401,F403
out_dir = 'out/exqpe_medium'
pe = 'exqpe'
