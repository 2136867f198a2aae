"""Trains a two-layer classifier on synthetic data on the GPU the worker assigned.

Reads PARAM_EPOCHS and PARAM_HIDDEN, writes the model to $SLUICE_OUT/model.pt and its final
accuracy to $SLUICE_METRICS. Prints which device it used, so the log shows the assignment.
"""
import json
import os

import torch


def main():
    assert torch.cuda.is_available(), "no CUDA device visible: is the step running with gpu: 1?"
    device = torch.device("cuda")
    print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')} "
          f"device={torch.cuda.get_device_name(0)}")
    torch.manual_seed(7)
    features = torch.randn(20_000, 64, device=device)
    labels = (features[:, :8].sum(dim=1) > 0).long()
    hidden = int(os.environ.get("PARAM_HIDDEN", "256"))
    model = torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2)
    ).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(int(os.environ.get("PARAM_EPOCHS", "20"))):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(features), labels)
        loss.backward()
        optimiser.step()
    accuracy = (model(features).argmax(dim=1) == labels).float().mean().item()
    print(f"trained {epoch + 1} epochs: loss {loss.item():.4f}, accuracy {accuracy:.3f}")
    torch.save(model.state_dict(), os.path.join(os.environ["SLUICE_OUT"], "model.pt"))
    with open(os.environ["SLUICE_METRICS"], "w") as out:
        json.dump({"accuracy": accuracy, "loss": loss.item()}, out)


if __name__ == "__main__":
    main()
