# ExPE "S" of the paper's Table 8: a Llama block at GPT-3 Small size (12 x 768, 12 heads), ~135M
# parameters with the paper's 32,768 vocab (~162M here with GPT-2's BPE), untied embeddings.
# Trained on FineWeb-Edu, 10B tokens, 0.5M-token batches (Table 9).
#   python prepare.py --dataset fineweb-edu --subset sample-10BT
#   torchrun --standalone --nproc_per_node=8 train.py config/expe_small.py
# Numbers the paper lost (learning rate, betas, decay, warmup) follow GPT-3 Small: marked [GPT-3].
out_dir = 'out/expe_small'
data_dir = 'data/fineweb-edu_gpt2'
arch = 'llama'
pe = 'expe'
n_layer = 12
n_head = 12
n_embd = 768
ffn_hidden = 2048          # 8/3 * 768, the Llama rule
tie_embeddings = False
dropout = 0.0
block_size = 512           # training length: not in the recovered text, 512 as in the paper's small runs
batch_size = 32            # micro-batch per GPU
gradient_accumulation_steps = 32  # 32 x 32 x 512 = 524,288 tokens per step (Table 9: 0.5M)
max_iters = 19073          # 10B tokens / 524,288
learning_rate = 6e-4       # [GPT-3]
min_lr = 6e-5              # [GPT-3] 10% of the peak
warmup_iters = 715         # [GPT-3] 375M tokens
weight_decay = 0.1         # [GPT-3]
beta1 = 0.9                # [GPT-3]
beta2 = 0.95               # [GPT-3]
eval_interval = 1000
eval_iters = 100
