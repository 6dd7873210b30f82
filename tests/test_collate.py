import torch

from cai_lightning.data.collate import LengthGroupedSampler, PadCollator

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


def test_length_grouped_sampler_is_a_seeded_permutation_that_cuts_padding():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3, mega_batch_factor=50)
    order = list(sampler)
    assert sorted(order) == list(range(200))
    assert order == list(LengthGroupedSampler(lengths, batch_size=8, seed=3, mega_batch_factor=50))
    sampler.set_epoch(1)
    assert list(sampler) != order

    def padded_tokens(indices):
        batches = [indices[i : i + 8] for i in range(0, len(indices), 8)]
        return sum(len(b) * max(lengths[j] for j in b) for b in batches)

    random_order = torch.randperm(200, generator=torch.Generator().manual_seed(0)).tolist()
    assert padded_tokens(order) < 0.7 * padded_tokens(random_order)


def test_short_last_batch_stays_last():
    lengths = list(range(1, 21))  # 20 examples, batch 8: batches of 8, 8 and a short one of 4
    order = list(LengthGroupedSampler(lengths, batch_size=8, seed=0, mega_batch_factor=1))
    shuffled = torch.randperm(20, generator=torch.Generator().manual_seed(0)).tolist()  # the sampler's first draw
    assert set(order[16:]) == set(shuffled[16:])  # the leftovers of the shuffle form the last batch
    for batch in (order[:8], order[8:16]):
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
