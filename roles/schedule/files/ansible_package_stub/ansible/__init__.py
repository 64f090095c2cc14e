# Empty on purpose: the engine needs ansible.module_utils (the argument-spec validator the modules use),
# not the controller package, whose __init__ pulls in the rest of ansible-core.
