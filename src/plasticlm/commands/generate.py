"""plasticlm generate CHECKPOINT [--state S] (--prompt TEXT | --prompts FILE | --interactive)"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

DESCRIPTION = """\
Generate text with a trained model, optionally after what it has read (--state, written by
`plasticlm read`). The prompt is read after the state, the way each read document follows
the one before. Names of special tokens in a prompt ([SEP], [USER], [AI], ...) become those tokens.

modes:
  --prompt TEXT     one prompt; text is printed as it is generated
  --prompts FILE    many prompts, --batch-size at a time, each from the same state; a text file
                    holds one prompt per line, a .jsonl file one per record (field --field,
                    default "prompt"); results go to --output (or stdout) as JSON lines
  --interactive     a prompt loop that keeps the state from turn to turn; /help lists its commands

Generation ends at --max-new-tokens, at the separator token ([EOS]; --ignore-eos to go on),
or at a --stop string (which is cut from the output; \\n and \\t are understood).

examples:
  plasticlm generate runs/tiny --prompt "The module" --temperature 0
  plasticlm generate runs/tiny --state notes.state --prompt "Q: what does ls do? A:" --stop "\\n"
  plasticlm generate runs/tiny --state notes.state --interactive --template "[USER] {prompt} [AI]"
"""

REPL_HELP = """commands: /save PATH (write the current state), /read PATH... (read files into it),
/reset (back to the state you started with), /quit; anything else is a prompt"""


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text, optionally from a saved state",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint directory (model.safetensors + tokenizer.json)")
    p.add_argument("--state", help="a state written by `plasticlm read` with this checkpoint")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prompt", help="the prompt")
    mode.add_argument("--prompts", metavar="FILE", help="a file of prompts (one per line, or .jsonl)")
    mode.add_argument("--interactive", action="store_true", help="a prompt loop that keeps the state")
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=200, help="default: 200")
    g.add_argument("--temperature", type=float, default=0.8, help="0 is greedy decoding (default: 0.8)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 keeps all (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 keeps all (default)")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages tokens already in the prompt or output (CTRL-style; default 1: off)")
    g.add_argument("--stop", action="append", default=[], metavar="STR", help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at the separator token")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    o = p.add_argument_group("input and output")
    o.add_argument("--template", default="{prompt}",
                   help="wraps each prompt, e.g. '[USER] {prompt} [AI]' (default: {prompt})")
    o.add_argument("--field", default="prompt", help="JSONL field of --prompts (default: prompt)")
    o.add_argument("--batch-size", type=int, default=8, help="prompts generated together with --prompts (default: 8)")
    o.add_argument("--output", help="write --prompts results here (JSON lines) instead of stdout")
    o.add_argument("--echo", action="store_true", help="print the prompt before the generated text")
    o.add_argument("--save-state", metavar="OUT", help="save the state after the prompt and the answer "
                   "(--prompt), or after the last turn (--interactive)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for --prompts")
    p.set_defaults(func=run)


def unescape(s: str) -> str:
    return s.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t").replace("\0", "\\")


def run(args) -> int:
    from ..device import pick_device
    from ..files import check_output
    from ..reading import Reader
    from ..sampling import Sampling

    if "{prompt}" not in args.template:
        raise ValueError(f"--template must contain {{prompt}}, got {args.template!r}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                            stop=tuple(unescape(s) for s in args.stop), stop_at_eos=not args.ignore_eos,
                            seed=args.seed)
    except ValueError as e:  # name the option, not the field: Sampling.top_p -> --top-p
        raise ValueError(re.sub(r"Sampling\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e))) from None
    if args.save_state:
        check_output(args.save_state, probe=True)  # before generating, not after
    reader = Reader.load(args.checkpoint, device=pick_device(args.device))
    state = reader.load_state(args.state) if args.state else reader.new_state()
    wrap = lambda text: args.template.replace("{prompt}", text)  # noqa: E731
    if args.prompts:
        return _batch(reader, state, sampling, args, wrap)
    if args.interactive:
        return _repl(reader, state, sampling, args, wrap)
    result = _one(reader, wrap(args.prompt), state, sampling, args.echo)
    if args.save_state:
        result.state.save(args.save_state)
    return 0


def _one(reader, prompt, state, sampling, echo: bool):
    if echo:
        print(prompt, end="", flush=True)
    t0 = time.perf_counter()
    result = reader.generate(prompt, state, sampling, on_text=lambda t: print(t, end="", flush=True))
    seconds = time.perf_counter() - t0
    print()
    print(f"[{len(result.tokens)} tokens in {seconds:.2f}s ({len(result.tokens) / max(seconds, 1e-9):.0f} tok/s); "
          f"stopped: {result.stop_reason}]", file=sys.stderr)
    return result


def _load_prompts(path: Path, field: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    prompts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix.lower() not in (".jsonl", ".ndjson"):
                prompts.append(line.rstrip("\r\n"))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise ValueError(f"{path}:{lineno}: no string field {field!r}; choose it with --field")
            prompts.append(record[field])
    if not prompts:
        raise ValueError(f"{path}: no prompts in this file")
    return prompts


def _batch(reader, state, sampling, args, wrap) -> int:
    from tqdm import tqdm

    prompts = _load_prompts(Path(args.prompts), args.field)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        bar = tqdm(total=len(prompts), unit="prompt", desc="generate", disable=args.no_progress, file=sys.stderr)
        for a in range(0, len(prompts), args.batch_size):
            chunk = prompts[a:a + args.batch_size]
            for p, g in zip(chunk, reader.generate_batch([wrap(p) for p in chunk], state, sampling)):
                out.write(json.dumps({"prompt": p, "completion": g.text, "stop_reason": g.stop_reason,
                                      "tokens": len(g.tokens)}, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(chunk))
        bar.close()
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _repl(reader, state, sampling, args, wrap) -> int:
    from ..reading import Documents

    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    start, current = state, state
    print(f"plasticlm: {current.describe()}. {REPL_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            continue
        cmd, _, rest = line.strip().partition(" ")
        try:
            if cmd in ("/quit", "/exit"):
                break
            elif cmd == "/help":
                print(REPL_HELP, file=sys.stderr)
            elif cmd == "/reset":
                current = start
                print(f"back to: {current.describe()}", file=sys.stderr)
            elif cmd == "/save" and rest:
                current.save(rest.strip())
                print(f"saved {rest.strip()}: {current.describe()}", file=sys.stderr)
            elif cmd == "/read" and rest:
                current = reader.read(Documents(rest.split()), current, progress=True)
                print(f"now: {current.describe()}", file=sys.stderr)
            elif cmd in ("/save", "/read"):
                print(f"{cmd} needs an argument. {REPL_HELP}", file=sys.stderr)
            elif cmd.startswith("/"):
                print(f"unknown command {cmd}. {REPL_HELP}", file=sys.stderr)
            else:
                current = _one(reader, wrap(line), current, sampling, echo=False).state
        except (ValueError, KeyError, OSError) as e:
            # A bad command, a file that cannot be read or a path that cannot be written (a /save to
            # a folder) must not end the session and lose its state.
            print(f"error: {e}", file=sys.stderr)
    if args.save_state:
        current.save(args.save_state)
    return 0
