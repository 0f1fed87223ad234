"""Models: loading a checkpoint (`loading`), reading one without its weights (`checkpoint`), a
Llama's dimensions without torch (`shape`), chat templates (`chat`), batching and the LM training
loop (`training`: `train_lm` of an `LMRecipe`), the tiny target/retrain models the embedded study
trains (`tiny`) and target/retrain fine-tuned from a base model (`finetune`)."""
