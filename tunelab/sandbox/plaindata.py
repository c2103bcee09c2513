"""Plain data across the sandbox's wall: values to JSON text and back, never pickle.

The check harness sends a call's arguments to the candidate's process and reads back its result
(and the arguments as the call left them) in this form. Only data survives the trip: None, bool,
int, float, complex, str, bytes, list, tuple, set, frozenset and dict (a dict subclass such as
Counter travels as a dict), and instances of the classes a problem itself defines (LeetCode's
ListNode and TreeNode), which are rebuilt on the other side from that side's own class of the same
name. Anything else (a function, a generator, a class the completion made up, an object whose
`__eq__` always answers True) cannot be sent: `encode` raises TypeError. Shared references and
cycles (a graph of nodes) survive, and nothing recurses, so a linked list of any length does.

This file is also sent, as text, into the candidate's process (`tunelab.sandbox.harness`): it uses
only the standard library and defines nothing else at import time.
"""

import json

_SCALARS = (type(None), bool, float, str)
_SMALL_INT = 1 << 62  # larger ints travel as hex text: JSON readers elsewhere lose precision past 2**53
_MAX_NODES = 2_000_000


def encode(value, classes):
    """`value` as JSON text; `classes` maps a name to a class whose instances may be sent."""
    allowed = {cls: name for name, cls in classes.items()}
    nodes, ids = [], {}

    def ref(item):
        kind = type(item)
        if kind in _SCALARS:
            return item
        if kind is int:
            return item if -_SMALL_INT < item < _SMALL_INT else ["i", format(item, "x")]
        if id(item) not in ids:
            if len(nodes) >= _MAX_NODES:
                raise ValueError(f"more than {_MAX_NODES} objects to send")
            ids[id(item)] = len(nodes)
            nodes.append(item)
            keep.append(item)  # alive until the end, so no id is reused
        return [ids[id(item)]]

    keep = []
    root = ref(value)
    out = []
    position = 0
    while position < len(nodes):
        item = nodes[position]
        position += 1
        kind = type(item)
        if kind is list:
            out.append(["l", [ref(x) for x in item]])
        elif kind is tuple:
            out.append(["t", [ref(x) for x in item]])
        elif kind is set or kind is frozenset:
            out.append(["s" if kind is set else "f", [ref(x) for x in item]])
        elif isinstance(item, dict) and (kind is dict or kind.__module__ == "collections"):
            out.append(["d", [[ref(k), ref(v)] for k, v in item.items()]])
        elif kind is bytes:
            out.append(["b", item.hex()])
        elif kind is complex:
            out.append(["c", [item.real, item.imag]])
        elif kind in allowed:
            attributes = vars(item)
            out.append(["o", allowed[kind], [[name, ref(v)] for name, v in attributes.items() if type(name) is str]])
        else:
            raise TypeError(f"{kind.__name__!r} is neither built-in data nor a class the problem defines")
    return json.dumps([root, out], separators=(",", ":"))


def decode(text, classes):
    """The value `encode` wrote, rebuilt with `classes` (by name); anything malformed raises ValueError."""
    try:
        root, nodes = json.loads(text)
        if type(nodes) is not list or len(nodes) > _MAX_NODES:
            raise ValueError("no node table")
        return _rebuild(root, nodes, classes)
    except (TypeError, ValueError, RecursionError) as err:
        raise ValueError(f"not plain data: {err}") from None


def _rebuild(root, nodes, classes):
    made = [None] * len(nodes)
    shells = {"l": list, "s": set, "d": dict}

    def value(r):
        kind = type(r)
        if kind in _SCALARS or kind is int:
            return r
        if kind is list and len(r) == 1 and type(r[0]) is int and 0 <= r[0] < len(nodes):
            return made[r[0]]
        if kind is list and len(r) == 2 and r[0] == "i" and type(r[1]) is str:
            return int(r[1], 16)
        raise ValueError(f"bad reference {r!r}")

    def children(body):
        if type(body) is not list:
            raise ValueError("a container's items are not a list")
        return body

    for index, node in enumerate(nodes):  # shells first: cycles can only run through them
        if type(node) is not list or len(node) < 2 or type(node[0]) is not str:
            raise ValueError(f"bad node {index}")
        if node[0] in shells:
            made[index] = shells[node[0]]()
        elif node[0] == "o":
            if len(node) != 3 or type(node[1]) is not str or node[1] not in classes:
                raise ValueError(f"no class named {node[1]!r} may be sent")
            made[index] = classes[node[1]].__new__(classes[node[1]])
        elif node[0] == "b" and type(node[1]) is str:
            made[index] = bytes.fromhex(node[1])
        elif node[0] == "c" and type(node[1]) is list and len(node[1]) == 2:
            made[index] = complex(*node[1])
        elif node[0] not in ("t", "f"):
            raise ValueError(f"unknown node {node[0]!r}")
    # Tuples and frozensets hold their items from birth: build each after the ones it holds
    # (without recursing; they cannot hold each other in a loop except through a shell).
    built = [nodes[i][0] not in ("t", "f") for i in range(len(nodes))]
    for start in range(len(nodes)):
        stack = [start]
        while stack:
            index = stack[-1]
            if built[index]:
                stack.pop()
                continue
            waiting = [r[0] for r in children(nodes[index][1])
                       if type(r) is list and len(r) == 1 and type(r[0]) is int and 0 <= r[0] < len(nodes)
                       and not built[r[0]]]
            if waiting:
                if len(stack) > len(nodes):
                    raise ValueError("immutable items hold each other in a loop")
                stack.extend(waiting)
                continue
            items = [value(r) for r in nodes[index][1]]
            made[index] = tuple(items) if nodes[index][0] == "t" else frozenset(items)
            built[index] = True
            stack.pop()
    # Then attributes and list items, and last what hashes its items (sets, dict keys), by when
    # the objects among those items are whole.
    for tag_order in (("o", "l"), ("s", "d")):
        for index, node in enumerate(nodes):
            tag = node[0]
            if tag not in tag_order:
                continue
            if tag == "o":
                for pair in children(node[2]):
                    if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
                        raise ValueError("bad attribute")
                    vars(made[index])[pair[0]] = value(pair[1])
            elif tag == "l":
                made[index].extend(value(r) for r in children(node[1]))
            elif tag == "s":
                made[index].update(value(r) for r in children(node[1]))
            else:
                for pair in children(node[1]):
                    if type(pair) is not list or len(pair) != 2:
                        raise ValueError("bad dict item")
                    made[index][value(pair[0])] = value(pair[1])
    return value(root)


