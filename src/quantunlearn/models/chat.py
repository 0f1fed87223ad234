"""Chat templates a config can name (``evaluation.chat_template``); torch-free, so the config
is validated against them at parse time."""

from __future__ import annotations

#: Chat templates a config can name (``evaluation.chat_template``). "llama2": the Llama-2 chat
#: format (Touvron et al. 2023, "Llama 2"), ``<s>[INST] {user} [/INST]``: what transformers 4.40
#: applied to a Llama-2 tokenizer without a template of its own (its class default), i.e. what
#: Zhang et al.'s evaluation code (RWKU's, run on MUSE's Llama-2-7B models) wrapped prompts in.
CHAT_TEMPLATES = {
    "llama2": (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'].strip() + ' ' + eos_token }}"
        "{% endif %}"
        "{% endfor %}"
    ),
}


def use_chat_template(tokenizer, evaluation: dict):
    """The tokenizer with the chat template ``evaluation.chat_template`` names: not set, its own
    (if any); "none": none (prompts as plain text); a name of CHAT_TEMPLATES: that one."""
    choice = evaluation.get("chat_template")
    if choice is None:
        return tokenizer
    if choice == "none":
        tokenizer.chat_template = None
    elif choice in CHAT_TEMPLATES:
        tokenizer.chat_template = CHAT_TEMPLATES[choice]
    else:
        raise ValueError(
            f"chat_template {choice!r} is not 'none' nor one of {list(CHAT_TEMPLATES)}"
        )
    return tokenizer
