# Passkey retrieval at CPU scale: the demo model (config/demo_cpu.py) at twice its length, with a
# fifth of the training rows replaced by synthetic passkey examples (key at a random depth, recalled
# at the end; eval_tasks.py makes them). Then test retrieval at 1x to 16x the training length:
# python train.py config/passkey_cpu.py --pe=rope --out_dir=out/passkey_rope
# python eval_tasks.py --ckpt out/passkey_expe out/passkey_rope --out out/passkey_eval
out_dir = 'out/passkey_expe'
data_dir = 'data/shakespeare_byte'
arch = 'gpt2'
pe = 'expe'
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
block_size = 256           # room for the key line, the question and some filler at 1x (105 bytes without filler)
batch_size = 16
passkey_frac = 0.2
max_iters = 1500
learning_rate = 2e-3
warmup_iters = 50
eval_interval = 250
eval_iters = 20
log_interval = 50
compile = False
