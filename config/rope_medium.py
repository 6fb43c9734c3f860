# Llama "M" with RoPE, the paper's baseline (Table 8): config/expe_medium.py with pe='rope'.
from config.expe_medium import *  # noqa: F401,F403
out_dir = 'out/rope_medium'
pe = 'rope'
rope_base = 10000.0        # Table 9's RoPE θ is lost; 10000 as in Llama 1/2
