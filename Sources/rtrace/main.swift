import RTraceCLI
RTraceCommand.main()
