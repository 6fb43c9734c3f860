# Passkey retrieval at CPU scale: the demo model (config/demo_cpu.py) with half of the training rows
# replaced by synthetic passkey examples (key at a random depth, recalled at the end; data.py
# makes them): 3000 steps of cosine decay, then 3000 more at the final learning rate (the copy
# mechanism forms late, at low learning rate; at step 4500 ExPE retrieved 100% at 1x, RoPE 6%).
# An all-passkey probe retrieved 88% at 1x after 1,500 steps (24k passkey rows); a fifth of the
# rows at T = 256 for 1,000 steps (3k rows) taught nothing. Then test retrieval at 1x to 16x:
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
block_size = 128           # a passkey example is 105 bytes without filler: 23 bytes of filler at 1x
batch_size = 16
task = 'passkey'
task_frac = 0.5            # half the rows passkey examples, half Shakespeare (val stays Shakespeare)
max_iters = 6000
lr_decay_iters = 3000
learning_rate = 2e-3
warmup_iters = 50
eval_interval = 500
eval_iters = 20
log_interval = 50
compile = False
