import pytest
import torch

from cai_lightning.data.collate import LengthGroupedSampler, PadCollator, padding_share

PAD, EOS, X = 1, 0, -100


def test_training_batch_is_right_padded_with_labels_padded_on_their_own():
    batch = PadCollator(pad_id=PAD)(
        [
            {"input_ids": [5, 6, 7, EOS], "labels": [X, X, 7, EOS]},
            {"input_ids": [5, EOS], "labels": [X, EOS]},
        ]
    )
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7, EOS], [5, EOS, PAD, PAD]]))
    assert torch.equal(batch["labels"], torch.tensor([[X, X, 7, EOS], [X, EOS, X, X]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))


def test_eos_stays_a_label_even_when_pad_equals_eos():
    # The bug this design avoids: deriving labels from "id != pad" would mask EOS when pad == EOS.
    batch = PadCollator(pad_id=EOS)([{"input_ids": [5, EOS], "labels": [X, EOS]}, {"input_ids": [5, 6, EOS], "labels": [X, 6, EOS]}])
    assert batch["labels"].tolist() == [[X, EOS, X], [X, 6, EOS]]


def test_prompts_are_left_padded_and_pad_to_multiple_of():
    batch = PadCollator(pad_id=PAD, pad_to_multiple_of=4)([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}])
    assert "labels" not in batch
    assert batch["input_ids"].tolist() == [[PAD, 5, 6, 7], [PAD, PAD, PAD, 8]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]


def _batches(order, batch_size):
    return {frozenset(order[i : i + batch_size]) for i in range(0, len(order), batch_size)}


def test_padding_share_of_literal_batches():
    # batches (3, 1) and (2, 2): 10 padded tokens, 8 real ones
    assert padding_share([3, 1, 2, 2], [0, 1, 2, 3], batch_size=2) == pytest.approx(0.2)
    assert padding_share([3, 2, 2, 3], [0, 3, 1, 2], batch_size=2) == 0.0  # equal lengths together: none


def test_one_group_over_the_whole_set_pads_least_but_repeats_its_batches():
    lengths = [1, 9, 2, 8, 3, 7, 4, 6]
    sampler = LengthGroupedSampler(lengths, batch_size=2, group_size=8, seed=5)
    first = list(sampler)
    # sorted 9 8 | 7 6 | 4 3 | 2 1 whatever the shuffle: 2 * (9 + 7 + 4 + 2) = 44 tokens, 40 of them real
    assert padding_share(lengths, first, 2) == pytest.approx(4 / 44)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and _batches(second, 2) == _batches(first, 2)  # new order, the very same batches


def test_length_grouped_sampler_is_seeded_new_every_epoch_and_cuts_padding():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, group_size=32, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(200))
    assert order == list(LengthGroupedSampler(lengths, batch_size=8, group_size=32, seed=3))
    assert order != list(LengthGroupedSampler(lengths, batch_size=8, group_size=32, seed=4))
    sampler.set_epoch(1)
    next_epoch = list(sampler)
    assert len(_batches(next_epoch, 8) & _batches(order, 8)) == 0  # groups of 4 batches: new batches each epoch
    sampler.set_epoch(0)
    assert list(sampler) == order  # resumable: an epoch's order depends on (seed, epoch) only

    for seed in range(5):  # the same shuffle, sorted within groups of 4 batches vs not at all (groups of 1 batch)
        grouped = padding_share(lengths, list(LengthGroupedSampler(lengths, 8, 32, seed=seed)), 8)
        unsorted = padding_share(lengths, list(LengthGroupedSampler(lengths, 8, 8, seed=seed)), 8)
        assert grouped < 0.7 * unsorted


def test_the_longest_example_leads_every_epoch_in_the_same_batches():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]  # one example of each length 1..101, most twice
    for seed, epoch in ((0, 0), (1, 0), (1, 1), (7, 3)):
        sampler = LengthGroupedSampler(lengths, batch_size=8, group_size=32, seed=seed)
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert lengths[order[0]] == 101 and sorted(order) == list(range(200))
        # only the batches' order changed: sorting within groups of 4 batches keeps its padding
        assert padding_share(lengths, order, 8) < 0.7 * padding_share(
            lengths, list(LengthGroupedSampler(lengths, 8, 8, seed=seed)), 8)
    # 21 examples in batches of 4: the short last batch is the shuffle's last example. Where that is the longest,
    # it alone moves to the front (swapped with the first batch's first), and the short batch stays last
    lengths, in_short_batch = list(range(1, 22)), 0
    for seed in range(60):
        order = list(LengthGroupedSampler(lengths, batch_size=4, group_size=4, seed=seed))
        assert order[0] == 20 and sorted(order) == list(range(21))
        if torch.randperm(21, generator=torch.Generator().manual_seed(seed))[-1] == 20:
            in_short_batch += 1
            assert lengths[order[-1]] < 21
    assert in_short_batch > 0


def test_group_size_is_rounded_up_to_whole_batches_and_must_be_positive():
    assert LengthGroupedSampler(range(20), batch_size=8, group_size=9).group_size == 16
    with pytest.raises(ValueError, match="group_size"):
        LengthGroupedSampler(range(20), batch_size=8, group_size=0)


def test_short_last_batch_stays_last():
    lengths = list(range(1, 21))  # 20 examples, batch 8: batches of 8, 8 and a short one of 4
    order = list(LengthGroupedSampler(lengths, batch_size=8, group_size=8, seed=0))
    shuffled = torch.randperm(20, generator=torch.Generator().manual_seed(0)).tolist()  # the sampler's first draw
    assert set(order[16:]) == set(shuffled[16:])  # the leftovers of the shuffle form the last batch
    for batch in (order[:8], order[8:16]):
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
