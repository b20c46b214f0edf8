import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: rtrace.torch hooks not tested")

import rtrace  # noqa: E402
import rtrace.torch  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self, E, k):
        super().__init__()
        self.gate = torch.nn.Linear(8, E, bias=False)
        self.top_k, self.norm_topk_prob = k, True
        self.experts = torch.nn.ModuleList()

    def forward(self, x):
        self.gate(x.reshape(-1, 8))
        return x


class Layer(torch.nn.Module):
    def __init__(self, moe, E, k):
        super().__init__()
        self.mlp = Block(E, k) if moe else torch.nn.Identity()

    def forward(self, x):
        return self.mlp(x)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 8)
        self.layers = torch.nn.ModuleList([Layer(i > 0, 16, 2) for i in range(3)])

    def forward(self, input_ids, attention_mask=None):
        x = self.emb(input_ids)
        for layer in self.layers:
            x = layer(x)
        return x


def test_record_routing(tmp_path):
    torch.manual_seed(0)
    m = Toy()
    p = tmp_path / "t.rtrace"
    with rtrace.Writer(p, model=dict(num_layers=3, num_experts=16, top_k=2, layer_map=[1, 2]),
                       engine=dict(name="transformers", role="train"), topk_weights_dtype="f32",
                       router_logits_dtype="f32") as w:
        with rtrace.torch.record_routing(m, w) as rec:
            rec.set_batch(uids=["a", "b"], prompt_lens=[2, 3])
            ids = torch.randint(0, 100, (2, 6))
            m(input_ids=ids, attention_mask=torch.ones(2, 6, dtype=torch.long))
    out = list(rtrace.Reader(p))
    assert [r.uid for r in out] == ["a", "b"]
    x = m.emb(ids[0])
    logits = m.layers[1].mlp.gate(x)
    exp = torch.topk(torch.softmax(logits, -1), 2).indices[:-1].numpy()
    assert np.array_equal(out[0].topk_ids[:, 0], exp)
    assert out[0].topk_ids.shape == (5, 2, 2)
