# A stand-in for FLARE 2.4's examples/advanced/cifar10/pt/learners/cifar10_model_learner.py: the same
# class, attributes and methods its subclass CIFAR10ScaffoldModelLearner (FLARE's file, unchanged, beside
# this one) uses (device, criterion, criterion_prox, writer, epoch_of_start_time, epoch_global,
# local_train, local_valid, save_model), and the same FLARE API use; FakeData instead of CIFAR-10.
import copy
import os

import numpy as np
import torch
from nvflare.apis.fl_constant import FLMetaKey, ReturnCode
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.abstract.model_learner import ModelLearner
from nvflare.app_common.app_constant import AppConstants, ModelName
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss
from torch.utils.data import DataLoader, Subset
from torch.utils.tensorboard import SummaryWriter
from torchvision import datasets, transforms

from pt.networks.cifar10_nets import ModerateCNN


class CIFAR10ModelLearner(ModelLearner):
    def __init__(self, train_idx_root="./dataset", aggregation_epochs=1, lr=1e-2, fedproxloss_mu=0.0, central=False,
                 analytic_sender_id="analytic_sender", batch_size=16, num_workers=0):
        super().__init__()
        self.train_idx_root, self.aggregation_epochs, self.lr, self.batch_size = train_idx_root, aggregation_epochs, lr, batch_size
        self.fedproxloss_mu, self.central, self.analytic_sender_id = fedproxloss_mu, central, analytic_sender_id
        self.best_acc = 0.0
        self.epoch_of_start_time = 0
        self.epoch_global = 0

    def initialize(self):
        self.info(f"Client {self.site_name} initialized at {self.app_root}")
        os.makedirs(self.app_root, exist_ok=True)
        self.local_model_file = os.path.join(self.app_root, "local_model.pt")
        self.best_local_model_file = os.path.join(self.app_root, "best_local_model.pt")
        self.writer = self.get_component(self.analytic_sender_id) or SummaryWriter(self.app_root)
        self.device = torch.device("cpu")
        self.model = ModerateCNN()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9)
        self.criterion = torch.nn.CrossEntropyLoss()
        if self.fedproxloss_mu > 0:
            self.criterion_prox = PTFedProxLoss(mu=self.fedproxloss_mu)
        data = datasets.FakeData(size=256, image_size=(3, 32, 32), num_classes=10, transform=transforms.ToTensor())
        index_file = os.path.join(self.train_idx_root, self.site_name + ".npy")
        if not os.path.exists(index_file):
            self.stop_task(f"No subset index found! File {index_file} does not exist!")
        self.train_loader = DataLoader(Subset(data, np.load(index_file).tolist()), batch_size=self.batch_size, shuffle=True)
        self.valid_loader = DataLoader(Subset(data, range(224, 256)), batch_size=32)

    def _load(self, params):
        self.model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in params.items()})

    def local_train(self, train_loader, model_global, val_freq: int = 0):
        for epoch in range(int(self.aggregation_epochs)):
            self.model.train()
            self.epoch_global = self.epoch_of_start_time + epoch
            for inputs, labels in train_loader:
                if self.is_aborted():
                    return
                self.optimizer.zero_grad()
                loss = self.criterion(self.model(inputs), labels)
                if self.fedproxloss_mu > 0:
                    loss += self.criterion_prox(self.model, model_global)
                loss.backward()
                self.optimizer.step()

    def save_model(self, is_best=False):
        save_dict = {"model_weights": self.model.state_dict(), "epoch": self.epoch_global}
        if is_best:
            save_dict.update({"best_acc": self.best_acc})
        torch.save(save_dict, self.best_local_model_file if is_best else self.local_model_file)

    def local_valid(self, valid_loader, tb_id=None):
        self.model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, labels in valid_loader:
                correct += (self.model(images).argmax(1) == labels).sum().item()
                total += len(labels)
        if tb_id:
            self.writer.add_scalar(tb_id, correct / total, self.epoch_global)
        return correct / total

    def train(self, model: FLModel):
        self._load(model.params)
        model_global = copy.deepcopy(self.model)
        for param in model_global.parameters():
            param.requires_grad = False
        self.local_train(train_loader=self.train_loader, model_global=model_global, val_freq=0)
        if self.is_aborted():
            return ReturnCode.TASK_ABORTED
        self.epoch_of_start_time += int(self.aggregation_epochs)
        acc = self.local_valid(self.valid_loader, tb_id="val_acc_local_model")
        self.save_model(is_best=False)
        if acc >= self.best_acc:
            self.best_acc = acc
            self.save_model(is_best=True)
        diff = {k: np.subtract(v.numpy(), model.params[k], dtype=np.float32) for k, v in self.model.state_dict().items()}
        result = FLModel(params_type=ParamsType.DIFF, params=diff)
        FLModelUtils.set_meta_prop(result, FLMetaKey.NUM_STEPS_CURRENT_ROUND, len(self.train_loader) * int(self.aggregation_epochs))
        return result

    def get_model(self, model_name: str):
        if model_name != ModelName.BEST_MODEL:
            raise ValueError(f"Unknown model_type: {model_name}")
        weights = torch.load(self.best_local_model_file)["model_weights"]
        return FLModel(params_type=ParamsType.FULL, params={k: v.numpy() for k, v in weights.items()})

    def validate(self, model: FLModel):
        self._load(model.params)
        owner = self.get_shareable_header(AppConstants.MODEL_OWNER)
        train_acc = self.local_valid(self.train_loader)
        val_acc = self.local_valid(self.valid_loader)
        self.info(f"validation acc ({owner}): {val_acc:.4f}")
        return FLModel(metrics={"train_accuracy": train_acc, "val_accuracy": val_acc})
