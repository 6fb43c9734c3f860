# Integer addition at CPU scale (TAPE's length-generalization experiment, after McLeish et al. 2024):
# every row one problem `a+b=c`, digits reversed, operands of 1..N digits, loss on the answer only
# (synthetic.py). Then exact match on a grid of operand lengths up to 4N:
# python train.py config/addition_cpu.py --pe=rope --out_dir=out/addition_rope
# python eval_tasks.py --ckpt out/addition_rope --tasks addition --out out/addition_eval
out_dir = 'out/addition_expe'
arch = 'gpt2'
pe = 'expe'
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
addition_digits = 10       # N
block_size = 34            # 3N + 4: the longest training problem, EOT a + b = c
batch_size = 64
max_iters = 2800
learning_rate = 2e-3
warmup_iters = 100
eval_interval = 500
eval_iters = 20
log_interval = 50
compile = False
