"""What crosses the sandbox's wall: plain data both ways, nothing else, and no recursion."""

import math
from collections import Counter, OrderedDict, deque

import pytest

from tunelab.sandbox.plaindata import decode, encode


class ListNode:
    def __init__(self, val=0, next=None):
        self.val, self.next = val, next


CLASSES = {"ListNode": ListNode}


@pytest.mark.parametrize("value", [
    None, True, 0, -3, 2 ** 80, -2 ** 70, 1.5, float("inf"), "", "x\ud800y", b"\x00\xff", 1 + 2j,
    [1, [2, (3, frozenset({4}))]], {1: "a", (1, 2): [(1, 2)]}, {"k": {1, 2}}, [(), [()], set()],
])
def test_built_in_data_round_trips(value):
    assert decode(encode(value, CLASSES), CLASSES) == value


def test_shared_and_cyclic_structures_survive_and_nothing_recurses():
    shared = (1, 2)
    back = decode(encode([shared, [shared]], CLASSES), CLASSES)
    assert back == [(1, 2), [(1, 2)]]
    ring = ListNode(1)
    ring.next = ring
    back = decode(encode(ring, CLASSES), CLASSES)
    assert back.next is back and back.val == 1
    head = None
    for value in range(100_000):  # far deeper than the recursion limit
        head = ListNode(value, head)
    back, length = decode(encode(head, CLASSES), CLASSES), 0
    while back:
        length, back = length + 1, back.next
    assert length == 100_000


def test_nan_and_dict_subclasses_travel_as_their_values():
    assert math.isnan(decode(encode(float("nan"), CLASSES), CLASSES))
    assert decode(encode(Counter("aab"), CLASSES), CLASSES) == {"a": 2, "b": 1}
    assert type(decode(encode(OrderedDict(a=1), CLASSES), CLASSES)) is dict


class AlwaysEqual:
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("value", [lambda: 0, iter([1]), deque([1]), object(), AlwaysEqual(), [AlwaysEqual()],
                                   ListNode(AlwaysEqual())])
def test_anything_but_data_is_refused(value):
    with pytest.raises(TypeError, match="neither built-in data nor a class the problem defines"):
        encode(value, CLASSES)


@pytest.mark.parametrize("text", [
    "", "[]", "not json", '[[0], [["o", "Evil", []]]]', "[[5], []]", '[[0], [["t", [[0]]]]]',
    '[[0], [["s", [[1]]], ["l", []]]]', '[[0], [["x", 1]]]', '[[0], [["o", "ListNode", [[1, 2]]]]]',
])
def test_malformed_text_is_refused_with_a_value_error(text):
    with pytest.raises(ValueError, match="not plain data"):
        decode(text, CLASSES)


def test_only_the_classes_given_are_rebuilt():
    text = encode(ListNode(1), CLASSES)
    with pytest.raises(ValueError, match="no class named 'ListNode'"):
        decode(text, {})
