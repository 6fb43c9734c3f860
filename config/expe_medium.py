# ExPE "M" of the paper's Table 8: a Llama block at GPT-3 Medium size (24 x 1024, 16 heads),
# ~342M parameters with the paper's 32,768 vocab (~360M with GPT-2's BPE), embeddings tied to the LM head (as the paper says).
# Trained on FineWeb-Edu, 10B tokens, 0.5M-token batches (Table 9).
#   python prepare.py --dataset fineweb-edu --subset sample-10BT
#   torchrun --standalone --nproc_per_node=8 train.py config/expe_medium.py
# Numbers the paper lost (learning rate, betas, decay, warmup) follow GPT-3 Medium: marked [GPT-3].
out_dir = 'out/expe_medium'
data_dir = 'data/fineweb-edu_gpt2'
arch = 'llama'
pe = 'expe'
n_layer = 24
n_head = 16
n_embd = 1024
ffn_hidden = 2816          # 8/3 * 1024 rounded up to a multiple of 256 (gives the paper's 342M)
tie_embeddings = True
dropout = 0.0
block_size = 512           # training length: not in the recovered text, 512 as in the paper's small runs
batch_size = 16            # micro-batch per GPU
gradient_accumulation_steps = 64  # 16 x 64 x 512 = 524,288 tokens per step (Table 9: 0.5M)
max_iters = 19073          # 10B tokens / 524,288
learning_rate = 3e-4       # [GPT-3]
min_lr = 3e-5              # [GPT-3] 10% of the peak
warmup_iters = 715         # [GPT-3] 375M tokens
weight_decay = 0.1         # [GPT-3]
beta1 = 0.9                # [GPT-3]
beta2 = 0.95               # [GPT-3]
eval_interval = 1000
eval_iters = 100
