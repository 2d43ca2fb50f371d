#!/usr/bin/env python3
"""Record how transformers renders real models' chat templates, for
tests/fixtures/templates.json: Qwen3's (the thinking switch, earlier turns'
<think> blocks dropped) and Gemma's <start_of_turn> format (which refuses a
system role). The templates come from the llama.cpp folder of the
llama-cpp-python==0.3.36 sdist (models/templates/, copies of the models'
own), as in make_tiny_moe.py:
    LLAMA_CPP=llama_cpp_python-0.3.36/vendor/llama.cpp python tests/scripts/make_template_cases.py
Each case: messages, keyword arguments, add_generation_prompt, and the text
(or the error transformers raised). Special tokens are tiny-llama's.
"""

import json
import os
import sys

import transformers
from transformers import AutoTokenizer

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TEMPLATES = {"qwen3": "Qwen-Qwen3-0.6B.jinja", "gemma": "google-gemma-2-2b-it.jinja"}

SYSTEM_USER = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}]
MULTI = [
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?"},
    {"role": "user", "content": "  Tell me a joke.  "},
]
CASES = [
    (SYSTEM_USER, {}, True),
    (SYSTEM_USER, {"enable_thinking": False}, True),
    (MULTI, {}, True),
    (MULTI, {"enable_thinking": False}, True),
    (MULTI, {}, False),
    ([{"role": "user", "content": "Hi!"}], {"enable_thinking": True}, True),
]


def main():
    llama_cpp = os.environ.get("LLAMA_CPP")
    if not llama_cpp:
        sys.exit("set LLAMA_CPP to the llama.cpp folder of the llama-cpp-python sdist (see the docstring)")
    tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "tiny-llama"))
    special = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
    out = dict(transformers=transformers.__version__, special_tokens=special, templates={})
    for name, file in TEMPLATES.items():
        with open(os.path.join(llama_cpp, "models", "templates", file)) as f:
            template = f.read()
        cases = []
        for messages, kwargs, gen in CASES:
            case = dict(messages=messages, kwargs=kwargs, add_generation_prompt=gen)
            try:
                case["text"] = tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=gen, **kwargs)
            except Exception as e:  # the template's raise_exception
                case["error"] = str(e)
            cases.append(case)
        out["templates"][name] = dict(source=f"llama.cpp models/templates/{file}", template=template, cases=cases)
        print(name, [("error" if "error" in c else len(c["text"])) for c in cases])
    with open(os.path.join(ROOT, "tests", "fixtures", "templates.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
