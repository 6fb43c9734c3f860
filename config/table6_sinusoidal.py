# The paper's small setting (Table 6) with pe='sinusoidal': config/table6_expe.py otherwise.
from config.table6_expe import *  # noqa: F401,F403
out_dir = 'out/table6_sinusoidal'
pe = 'sinusoidal'
