"""The ``bushu`` command: one small module per subcommand (``add_arguments(parser)`` + ``run(args)``)."""
