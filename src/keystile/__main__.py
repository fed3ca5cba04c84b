from keystile._cli.main import main

main()
