from cni_bridge.main import entry

entry()
