"""iptables-restore and iptables-save text: quoting, comments, batches, reading a save.

Every rule is written exactly as `iptables-save` prints it (field order, `/32` masks,
`-m tcp`, quoting), on both backends; so CHECK and the fallbacks compare lines as text.
Tables are committed one by one even inside one restore (each `COMMIT`), so the order
matters when a batch fails halfway: ADD writes filter and raw (drops, guard) before nat
(which opens ports), DEL removes nat first.
"""

from __future__ import annotations

from ...records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from .scheme import Rule, SharedRules

TABLES_ADD_ORDER = ("filter", "raw", "nat")
TABLES_DELETE_ORDER = ("nat", "raw", "filter")
# xt_comment keeps 256 bytes including the NUL.
COMMENT_MAX = 255

_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def quote(value: str) -> str:
    """Quote a match argument exactly as iptables-save does (libxtables xtables_save_string).

    iptables-restore reads it back unchanged, so what we write is what save prints.
    """
    if value and all(c in _NO_QUOTE for c in value):
        return value
    return '"' + "".join("\\" + c if c in "\"\\'" else c for c in value) + '"'


def unquote(text: str) -> tuple[str, str]:
    """Read one (possibly quoted) argument at the start of text: (value, rest)."""
    if not text.startswith('"'):
        value, _, rest = text.partition(" ")
        return value, rest
    out: list[str] = []
    i = 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), text[i + 1:].lstrip(" ")
        out.append(c)
        i += 1
    return "".join(out), ""


def printable_comment(text: str) -> str:
    """A comment as xt_comment can hold it: at most 255 bytes, and no newline or other control
    character, which would end the restore line early (the comment is for people and for GC,
    so such characters are replaced, not escaped)."""
    clean = "".join(c if " " <= c < "\x7f" or c > "\x9f" else "?" for c in text)
    data = clean.encode()
    return clean if len(data) <= COMMENT_MAX else data[:COMMENT_MAX].decode(errors="ignore")


def comment_match(comment: str) -> str:
    return f"-m comment --comment {quote(comment)}"


def comment_of(spec: str) -> str | None:
    """The comment of a saved rule spec, unquoted, or None."""
    head, found, tail = spec.partition("-m comment --comment ")
    if not found:
        return None
    return unquote(tail)[0]


def target_of(spec: str) -> str:
    """The jump (-j) or goto (-g) target of a saved rule spec, "" if none."""
    words = spec.split(" ")
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "-g"):
            return words[i + 1]
    return ""


# --- rendering ------------------------------------------------------------------------


def render_tables(sections: dict[str, list[str]], order: Sequence[str]) -> str:
    """The restore text of each table's lines, in `order`, each table in its own COMMIT."""
    out = []
    for table in order:
        lines = sections.get(table)
        if lines:
            out.append(f"*{table}")
            out.extend(lines)
            out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def _add_line(rule: Rule) -> str:
    return f"-I {rule.chain} 1 {rule.spec}" if rule.insert else f"-A {rule.chain} {rule.spec}"


def render_add(chains: Sequence[tuple[str, str]], rules: Sequence[Rule], create: Sequence[SharedRules],
               relied_on: Sequence[Rule] = ()) -> str:
    """The restore text that adds an attachment's chains and rules, and creates `create`.

    Each table's section first checks (``-C``) that the rules `relied_on` are there (shared
    rules that others created and a firewall reload may have flushed): a missing one makes
    the whole batch fail before that table changes, and the caller repairs. Then chains are
    declared (created, or emptied if a leftover exists), then shared rules, then the
    attachment's own. Empty when there is nothing to add.
    """
    declared: dict[str, list[str]] = {}
    added: dict[str, list[str]] = {}
    if not (chains or rules or create):
        return ""
    for rule in relied_on:
        declared.setdefault(rule.table, []).append(f"-C {rule.chain} {rule.spec}")
    for resource in create:
        for table, chain in resource.chains:
            declared.setdefault(table, []).append(f":{chain} - [0:0]")
        for rule in resource.rules:
            added.setdefault(rule.table, []).append(_add_line(rule))
    for table, chain in chains:
        declared.setdefault(table, []).append(f":{chain} - [0:0]")
    for rule in rules:
        added.setdefault(rule.table, []).append(_add_line(rule))
    sections = {t: declared.get(t, []) + added.get(t, []) for t in set(declared) | set(added)}
    return render_tables(sections, TABLES_ADD_ORDER)


def render_delete(chains: Sequence[tuple[str, str]], rules: Sequence[Rule], delete: Sequence[SharedRules]) -> str:
    """The restore text that removes what render_add added, and the shared `delete`.

    Chains being removed are emptied first (`:CHAIN - [0:0]`), so the rules inside them
    need no `-D`; rules elsewhere are deleted by their exact text; then the chains go.
    """
    flushed = list(dict.fromkeys([*chains, *(chain for resource in delete for chain in resource.chains)]))
    gone = {chain for _, chain in flushed}
    sections: dict[str, list[str]] = {}
    for table, chain in flushed:
        sections.setdefault(table, []).append(f":{chain} - [0:0]")
    for rule in [*rules, *(rule for resource in delete for rule in resource.rules)]:
        if rule.chain not in gone:
            sections.setdefault(rule.table, []).append(f"-D {rule.chain} {rule.spec}")
    for table, chain in flushed:
        sections.setdefault(table, []).append(f"-X {chain}")
    return render_tables(sections, TABLES_DELETE_ORDER)


# --- reading iptables-save --------------------------------------------------------------


@record(frozen=True)
class Saved:
    """One table as iptables-save printed it: chain names and rules, in order."""

    table: str
    chains: tuple[str, ...]
    rules: tuple[tuple[str, str], ...]  # (chain, spec)

    def lines(self) -> set[str]:
        return {f"-A {chain} {spec}" for chain, spec in self.rules}


def parse_save(table: str, text: str) -> Saved:
    chains: list[str] = []
    rules: list[tuple[str, str]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("*"):
            inside = line[1:] == table
        elif not inside or line.startswith("#"):
            continue
        elif line.startswith(":"):
            chains.append(line[1:].split(" ", 1)[0])
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            rules.append((chain, spec))
    return Saved(table, tuple(chains), tuple(rules))


def render_cleanup(saved: Sequence[Saved], chains: Collection[str], comments: Collection[str]) -> str:
    """Remove, from what the tables really hold, the given chains and every rule that
    jumps to them or carries one of the given comments. Duplicates are all removed.

    The fallback when the record and the kernel disagree (rules flushed by hand,
    another version's rule text, a batch that failed halfway): built from a fresh
    save, so every line in it refers to something that exists.
    """
    sections: dict[str, list[str]] = {}
    for table in saved:
        present = [chain for chain in table.chains if chain in chains]
        gone = set(present)
        lines = [f":{chain} - [0:0]" for chain in present]
        for chain, spec in table.rules:
            if chain in gone:
                continue
            if target_of(spec) in chains or comment_of(spec) in comments:
                lines.append(f"-D {chain} {spec}")
        lines.extend(f"-X {chain}" for chain in present)
        if lines:
            sections[table.table] = lines
    return render_tables(sections, TABLES_DELETE_ORDER)


def absent(saved: Sequence[Saved], chains: Sequence[tuple[str, str]],
           rules: Sequence[Rule]) -> tuple[list[tuple[str, str]], list[Rule]]:
    """The chains and rules that the saved tables lack."""
    by_table = {table.table: table for table in saved}
    lines = {table.table: table.lines() for table in saved}
    return ([(t, c) for t, c in chains if t not in by_table or c not in by_table[t].chains],
            [rule for rule in rules if rule.saved not in lines.get(rule.table, set())])


def missing(saved: Sequence[Saved], chains: Sequence[tuple[str, str]], rules: Sequence[Rule]) -> list[str]:
    """The chains and rules (as save lines) that the saved tables lack."""
    lost_chains, lost_rules = absent(saved, chains, rules)
    return [*(f"{table}: chain {chain}" for table, chain in lost_chains),
            *(f"{rule.table}: {rule.saved}" for rule in lost_rules)]
