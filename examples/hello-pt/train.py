# PyTorch's CIFAR-10 tutorial, converted to federated learning with FLARE's Client API.
# The only fedray-specific line is the import: `import fedray.client as flare`
# (for NVIDIA FLARE it would be `import nvflare.client as flare`).
#
#   python -m fedray.run site.script=examples/hello-pt/train.py num_clients=2 rounds=2 \
#       site.script_args="--data_path ~/.cache/fedray/cifar10"
import argparse
import os

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
import torchvision.transforms as transforms
from net import Net

import fedray.client as flare
from fedray.client.tracking import SummaryWriter

parser = argparse.ArgumentParser()
parser.add_argument("--data_path", default=os.path.expanduser("~/.cache/fedray/cifar10"))
parser.add_argument("--batch_size", type=int, default=32)
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--synthetic", type=int, default=0, help="offline: this many generated CIFAR-10-shaped images")
args = parser.parse_args()

transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


def load_data():
    if args.synthetic:
        from fedray import make_synthetic

        data = make_synthetic(args.synthetic, args.synthetic // 5, seed=0, signal=0.9, blotch=20.0)
        to_set = lambda x, y: torch.utils.data.TensorDataset(  # noqa: E731
            torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1), torch.from_numpy(y))
        return to_set(data.train_images, data.train_labels), to_set(data.test_images, data.test_labels)
    train = torchvision.datasets.CIFAR10(root=args.data_path, train=True, download=True, transform=transform)
    test = torchvision.datasets.CIFAR10(root=args.data_path, train=False, download=True, transform=transform)
    return train, test


def main():
    flare.init()
    site, num_sites = flare.get_site_name(), flare.get_config()["num_clients"]
    train_set, test_set = load_data()
    # This site's share of the training set: every num_sites-th image.
    site_index = int(site.split("-")[1]) - 1
    train_set = torch.utils.data.Subset(train_set, range(site_index, len(train_set), num_sites))
    trainloader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    testloader = torch.utils.data.DataLoader(test_set, batch_size=256, shuffle=False)

    net = Net()
    best_accuracy, best_weights = -1.0, None
    summary_writer = SummaryWriter()

    def evaluate(weights):
        model = Net()
        model.load_state_dict(weights)
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, labels in testloader:
                correct += (model(images).argmax(1) == labels).sum().item()
                total += labels.size(0)
        return correct / total

    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:  # the job is over
            break

        if flare.is_submit_model():
            weights = best_weights if best_weights is not None else net.state_dict()
            flare.send(flare.FLModel(params=weights))
            continue

        accuracy = evaluate(input_model.params)
        if flare.is_evaluate():
            flare.send(flare.FLModel(metrics={"accuracy": accuracy}))
            continue

        # train
        net.load_state_dict(input_model.params)
        criterion = nn.CrossEntropyLoss()
        optimizer = optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
        steps = 0
        for epoch in range(args.epochs):
            running_loss = 0.0
            for i, (inputs, labels) in enumerate(trainloader):
                optimizer.zero_grad()
                loss = criterion(net(inputs), labels)
                loss.backward()
                optimizer.step()
                running_loss += loss.item()
                steps += 1
                if i % 50 == 49:
                    global_step = input_model.current_round * len(trainloader) * args.epochs + steps
                    summary_writer.add_scalar("train_loss", running_loss / 50, global_step)
                    running_loss = 0.0

        if accuracy > best_accuracy:
            best_accuracy, best_weights = accuracy, {k: v.clone() for k, v in input_model.params.items()}
        flare.send(flare.FLModel(params=net.cpu().state_dict(), metrics={"accuracy": accuracy},
                                 meta={"NUM_STEPS_CURRENT_ROUND": steps}))

    print(f"{site}: finished; best accuracy of a received global model {best_accuracy:.4f}")


if __name__ == "__main__":
    main()
